"""The data plane's Lua scripts: every state transition is one atomic script over a whole batch of tasks.

The scripts live in `lua/` (one file per script, helpers in `lua/lib/`), loaded with
importlib.resources. Each file's first `-- needs:` line names the helpers it calls; `link()`
puts together the KEYS binding, those helpers (each after the helpers it needs in turn) and the
script. Lua runs a script's whole text on every call, so a script carries only the helpers it
needs (a helper never called would still be built as a closure each time).

Every key a script touches is declared in KEYS (the batch's keys, all under one `{sid}` hash
tag, so a batch lives on one Redis Cluster slot and its scripts run on one shard). The layout is
chosen so that the hot path writes as little per task as possible:

- the queue holds *runs* of pending tasks (`lo:hi:attempt:submitted:queued`), not one entry per
  task: a submission chunk of 5,000 tasks is one list entry, and a claim splits a run;
- a claim is one lease entry, one claim record (its runs) and one count, whatever its size: the
  tasks of a live claim need no per-task bookkeeping at all;
- a task gets one record field when it leaves a claim (`t`: finished with its output, failed, or
  retrying), written once;
- one terminal event per script call (indices as a comma list, small outputs alongside), not
  one per task; cancelling a batch is one event and O(1) in its size.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

# Key roles, in KEYS[] order for every script.
KEYS = ("meta", "q", "q1", "t", "in", "err", "fa", "ia", "lease", "cn", "ch", "retry", "n", "done", "wake",
        "idle", "hand", "apx")

_LUA = importlib.resources.files(__package__).joinpath("lua")
_NEEDS = re.compile(r"^-- needs: (.*)$", re.M)


@functools.cache
def source(path: str) -> str:
    """A Lua file of the package, by its path under lua/ ("claim.lua", "lib/emit.lua")."""
    return _LUA.joinpath(path).read_text(encoding="utf-8")


def needs(text: str) -> list[str]:
    """The helpers a Lua file declares it calls (its `-- needs:` line; "(nothing)" for none)."""
    m = _NEEDS.search(text)
    if m is None:
        raise ValueError("a gridop Lua file starts by saying what it needs: -- needs: helper, ... (or (nothing))")
    return [name.strip() for name in m.group(1).split(",") if name.strip() and name.strip() != "(nothing)"]


def link(name: str) -> str:
    """The script `name` (lua/<name>.lua) as Redis runs it: the KEYS binding, the helpers it needs,
    each after the ones it needs itself, then the script."""
    order: list[str] = []

    def visit(helper: str, trail: tuple[str, ...]) -> None:
        if helper in order:
            return
        if helper in trail:
            raise ValueError(f"Lua helpers need one another in a circle: {' -> '.join((*trail, helper))}")
        for dep in needs(source(f"lib/{helper}.lua")):
            visit(dep, (*trail, helper))
        order.append(helper)

    body = source(f"{name}.lua")
    for helper in needs(body):
        visit(helper, ())
    return "\n".join([source("keys.lua"), *(source(f"lib/{h}.lua") for h in order), body])


SCRIPTS = ("claim", "complete", "heartbeat", "sweep", "cancel", "append", "unidle", "create", "submit",
           "snapshot", "records")
CLAIM, COMPLETE, HEARTBEAT, SWEEP, CANCEL, APPEND, UNIDLE, CREATE, SUBMIT, SNAPSHOT, RECORDS = (
    link(name) for name in SCRIPTS)
