"""The code blocks of the README and docs/, read from the pages themselves, so a page cannot drift
from what its test runs; and the ways a user runs them (a shell, a Python REPL that takes `await`)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
RUNNER = pathlib.Path(__file__).with_name("repl.py")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def first(self) -> str:
        """The block's first non-empty line: how the registry names it."""
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            found.append(Block(page, i + 1, lines[i][3:].strip(), "\n".join(lines[i + 1:j]) + "\n"))
            i = j + 1
        else:
            i += 1
    return found


def block(page: str, first: str) -> Block:
    """The one block of `page` whose first line starts with `first`."""
    matches = [b for b in blocks(page) if b.first.startswith(first)]
    exact = [b for b in matches if b.first == first]
    matches = exact if len(exact) == 1 else matches
    assert len(matches) == 1, f"{page}: {len(matches)} blocks start with {first!r}"
    return matches[0]


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the installed entry points on PATH, no test-only settings, no cluster unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDOP_", "PYTEST")) and k != "KUBECONFIG"}
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def fresh_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A working directory like a checkout's root, as the pages assume: examples/ beside the user."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    return work


def run_shell(b: Block, cwd: pathlib.Path, env: dict[str, str], *, replace: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell block with bash, stopping at the first failing command. `replace` swaps only
    what differs on this machine (the address of the user's Redis)."""
    script = b.text
    for old, new in (replace or {}).items():
        assert old in script, f"{b.where}: {old!r} is not in the block any more"
        script = script.replace(old, new)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_python(b: Block, cwd: pathlib.Path, env: dict[str, str], *, prelude: str = "", replace: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a Python block as a user pastes it into `python -m asyncio` (top-level await works); each
    expression whose line ends in a comment holding a Python literal (`# True`) must equal it."""
    code = b.text
    for old, new in (replace or {}).items():
        assert old in code, f"{b.where}: {old!r} is not in the block any more"
        code = code.replace(old, new)
    snippet = cwd / f"snippet_{b.line}.py"
    snippet.write_text(prelude + code)
    return subprocess.run([sys.executable, str(RUNNER), str(snippet), b.where], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
