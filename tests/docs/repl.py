"""Run a file of Python as a reader runs a page's block: statement by statement, top-level `await`
allowed (as in `python -m asyncio` or a notebook). An expression statement whose line ends in a
comment holding a Python literal (`manager.stop_session("s")   # True`), at the end of its line or on
a line of its own right after it, must evaluate to it; `...`
in that literal stands for any value (`[{'session_id': 's', 'last_active_time': ...}]`).

    python repl.py SNIPPET.py WHERE
"""

from __future__ import annotations

import ast
import asyncio
import io
import pathlib
import sys
import tokenize


def _comments(source: str) -> dict[int, str]:
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def _matches(value: object, expected: object) -> bool:
    if expected is Ellipsis:
        return True
    if isinstance(expected, dict):
        return isinstance(value, dict) and value.keys() == expected.keys() and all(
            _matches(value[k], expected[k]) for k in expected)
    if isinstance(expected, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(expected)
                and all(_matches(v, e) for v, e in zip(value, expected, strict=False)))
    return value == expected


def _expected(comment: str) -> tuple[bool, object]:
    try:
        return True, ast.literal_eval(comment)
    except (ValueError, SyntaxError):
        return False, None


def main(path: str, where: str) -> int:
    source = pathlib.Path(path).read_text()
    comments = _comments(source)
    lines = [*source.splitlines(), ""]  # lines[n] is line n + 1
    namespace: dict[str, object] = {"__name__": "__main__", "asyncio": asyncio}
    runner = asyncio.Runner()
    for node in ast.parse(source).body:
        is_expr = isinstance(node, ast.Expr)
        tree = ast.Expression(node.value) if is_expr else ast.Module([node], type_ignores=[])
        code = compile(tree, path, "eval" if is_expr else "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        # The page's own code, run as its reader would: plain statements outside any event loop (as
        # `python` runs them), awaits on one loop kept for the whole page (as the asyncio REPL does).
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            result = runner.run(result)
        if is_expr:
            end = node.end_lineno or node.lineno
            comment = comments.get(end) or (comments.get(end + 1, "") if lines[end].lstrip().startswith("#") else "")
            known, expected = _expected(comment)
            if known and not _matches(result, expected):
                print(f"{where}: line {node.lineno}: "
                      f"{ast.get_source_segment(source, node)} gave {result!r}, the page says {expected!r}",
                      file=sys.stderr)
                return 1
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
