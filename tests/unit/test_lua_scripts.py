"""The data plane's Lua files link as they say: each declares exactly the helpers it calls."""

from __future__ import annotations

import importlib.resources
import re

import pytest

from gridop.tasks import scripts

LUA = importlib.resources.files("gridop.tasks").joinpath("lua")
HELPERS = sorted(p.name.removesuffix(".lua") for p in LUA.joinpath("lib").iterdir() if p.name.endswith(".lua"))


def defined(helper: str) -> set[str]:
    """The names a helper file defines (its function, or its locals)."""
    names: set[str] = set()
    for line in scripts.source(f"lib/{helper}.lua").splitlines():
        if m := re.match(r"local function (\w+)", line):
            names.add(m.group(1))
        elif m := re.match(r"local ([\w, ]+?) =", line):
            names.update(n.strip() for n in m.group(1).split(","))
    return names


def used(text: str) -> set[str]:
    """The helpers a Lua text mentions (comments aside)."""
    code = re.sub(r"--[^\n]*", "", text)
    return {h for h in HELPERS if any(re.search(rf"\b{name}\b", code) for name in defined(h))}


@pytest.mark.parametrize("path", [f"{name}.lua" for name in scripts.SCRIPTS] + [f"lib/{h}.lua" for h in HELPERS])
def test_every_lua_file_declares_exactly_the_helpers_it_calls(path: str) -> None:
    text = scripts.source(path)
    own = {path.removeprefix("lib/").removesuffix(".lua")}
    assert set(scripts.needs(text)) == used(text) - own


def test_a_linked_script_defines_each_helper_once_before_its_first_use() -> None:
    for name in scripts.SCRIPTS:
        linked = scripts.link(name)
        for helper in HELPERS:
            first = linked.find(scripts.source(f"lib/{helper}.lua"))
            assert linked.count(scripts.source(f"lib/{helper}.lua")) <= 1
            if first >= 0:
                for n in defined(helper):
                    assert not re.search(rf"\b{n}\b", re.sub(r"--[^\n]*", "", linked[:first])), (name, helper, n)


def test_an_undeclared_file_is_refused() -> None:
    with pytest.raises(ValueError, match="needs"):
        scripts.needs("return 1")
