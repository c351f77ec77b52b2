"""`gridctl tasks`: submit a JSONL file of tasks, follow it, inspect, collect results, cancel; or run locally.

    gridctl tasks submit tasks.jsonl --redis-url redis://localhost:6379/0 [--session my-run] [--wait]
    gridctl tasks status my-run
    gridctl tasks results my-run [-o jsonl|json|yaml|table]
    gridctl tasks cancel my-run
    gridctl tasks run --local tasks.jsonl --handler mymod:handle --workers 2

Exit codes (see common.py): 0 every task finished; 3 some failed or were cancelled; 1 the work did
not finish (a timeout, every local worker died, Redis unreachable); 2 a usage error; 130 Ctrl-C.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, TextIO

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..client.tasks import AsyncGridConnector
from ..tasks.connection import address_of, node_url
from ..tasks.states import TaskState
from ..tasks.store import BatchExists, task_id
from ..tasks.sweeper import Sweeper
from ..tasks.worker import load_handler
from .common import (
    FAILED,
    UNFINISHED,
    AliasedGroup,
    Globals,
    Unfinished,
    error,
    pass_globals,
    positive,
    runs_async,
)
from .output import TaskProgress, output_option, print_document, print_table

WORKER_GRACE = 5.0  # seconds local workers get to stop before they are killed, when a run ends early


@dataclasses.dataclass
class DataPlane:
    """The `tasks` group's own flags."""

    redis_url: str | None
    max_retries: int
    namespace: str

    def config(self) -> dict[str, Any]:
        return {"redis_url": self.redis_url, "namespace": self.namespace, "max_retries": self.max_retries}


def read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        source: TextIO = sys.stdin if path == "-" else open(path)  # noqa: SIM115
    except OSError as exc:
        raise ValueError(f"tasks file {path!r}: {exc.strerror or exc}") from exc
    tasks = []
    with source:
        for lineno, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
            if not isinstance(task, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object (a task's event)")
            tasks.append(task)
    if not tasks:
        raise ValueError(f"{path}: no tasks")
    return tasks


def _done(counts: dict[str, int]) -> int:
    return counts["finished"] + counts["failed"] + counts["cancelled"]


async def follow(connector: AsyncGridConnector, sid: str, total: int, timeout: float | None, quiet: bool,
                 workers: list[subprocess.Popen[bytes]] | None = None) -> dict[str, int]:
    """Show a progress bar until every task is terminal; raises Unfinished when the timeout
    passes or every local worker has exited first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with TaskProgress(total, sid, quiet) as bar:
        while True:
            counts = await connector.store.counts(sid)
            bar.update(counts)
            if _done(counts) >= total:
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise Unfinished(f"{total - _done(counts)} of {total} tasks of session {sid!r} unfinished "
                                 f"after {timeout:g}s")
            if workers and all(w.poll() is not None for w in workers):
                counts = await connector.store.counts(sid)
                bar.update(counts)
                if _done(counts) < total:
                    codes = ", ".join(str(w.returncode) for w in workers)
                    raise Unfinished(f"all {len(workers)} local workers exited (exit codes {codes}) with "
                                     f"{total - _done(counts)} tasks unfinished")
            await asyncio.sleep(0.2)


def result_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task (task_id, state, output or error), in task order, from the HTC-Grid dict."""
    states = dict.fromkeys(results["finished"], TaskState.FINISHED)
    states.update(dict.fromkeys(results["failed"], TaskState.FAILED))
    outputs = dict(zip(results["finished"], results["finished_OUTPUT"], strict=False))
    errors = results["metadata"]["errors"]
    rows = []
    for tid in results["finished"] + results["failed"] + results["cancelled"]:
        row: dict[str, Any] = {"task_id": tid, "state": states.get(tid, TaskState.CANCELLED).value}
        if tid in outputs:
            row["output"] = json.loads(outputs[tid]) if outputs[tid] else None
        if tid in errors:
            row["error"] = errors[tid]
        rows.append(row)
    return rows


async def print_results(connector: AsyncGridConnector, sid: str, output: str) -> int:
    meta = await connector.store.meta(sid)
    if not meta:
        error(f"no session {sid!r} in the data plane (see: gridctl tasks status {sid})")
        return UNFINISHED
    total = int(meta["total"])
    submission = {"session_id": sid, "task_ids": [task_id(sid, i) for i in range(total)]}
    results = await connector.get_results(submission, wait=False)
    if output in ("json", "yaml"):
        print_document(results, output)
    elif output == "table":
        print_table(["TASK", "STATE", "OUTPUT / ERROR"],
                    [[r["task_id"], r["state"], r.get("error") or json.dumps(r.get("output"))]
                     for r in result_rows(results)])
    else:
        for row in result_rows(results):
            sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0 if not results["failed"] and not results["cancelled"] else FAILED


@dataclasses.dataclass
class LocalRun:
    redis_url: str
    handler: str
    workers: int
    heartbeat: float
    lease: float
    timeout_per_task: float | None


def spawn_workers(run: LocalRun, sid: str, prefix: str) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "gridop", "worker", "--redis-url", run.redis_url, "--session", sid,
               "--handler", run.handler, "--key-prefix", prefix, "--log-format", "text", "--log-level", "WARNING",
               "--heartbeat", str(run.heartbeat), "--lease", str(run.lease)]
    if run.timeout_per_task:
        command += ["--timeout", str(run.timeout_per_task)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    # A process group of their own: Ctrl-C reaches gridctl alone, which cancels what is left and
    # then stops them (a worker interrupted by the terminal first would race that, and report the
    # run as "every worker exited").
    return [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            for _ in range(run.workers)]


def stop_workers(workers: list[subprocess.Popen[bytes]], grace: float) -> None:
    """Stop local workers: SIGTERM (they drain), and SIGKILL for any still running after `grace`
    seconds when the run ended early (a handler in the middle of a long task would hold it up).
    A finished run's workers are already on their way out: wait for them."""
    for w in workers:
        if w.poll() is None:
            w.terminate()
    deadline = time.monotonic() + grace
    for w in workers:
        try:
            w.wait(None if not grace else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


async def _reachable(url: str) -> None:
    client = aioredis.Redis.from_url(node_url(url), socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
    except RedisError as exc:
        raise Unfinished(f"cannot reach Redis at {address_of(url)} ({exc}); check --redis-url") from exc
    finally:
        await client.aclose()


async def _connector(plane: DataPlane) -> AsyncGridConnector:
    """The SDK connector, once the data plane answers (an unreachable one is named: exit code 1)."""
    assert plane.redis_url is not None
    await _reachable(plane.redis_url)
    return AsyncGridConnector(plane.config())


def _data_plane() -> DataPlane:
    """The `tasks` group's flags; a missing Redis URL is a usage error, named before anything is read."""
    plane = click.get_current_context().find_object(DataPlane)
    assert plane is not None
    if not plane.redis_url:
        raise ValueError("--redis-url (or GRIDOP_REDIS_URL) is required: the data plane's redis:// URL")
    return plane


# -- the commands ------------------------------------------------------------------------------------------


@click.group(cls=AliasedGroup)
@click.option("--redis-url", envvar="GRIDOP_REDIS_URL", show_envvar=True, metavar="URL",
              help="the data plane: redis://[user:password@]host:port/db")
@click.option("--max-retries", type=click.IntRange(min=0), default=3,
              help="retries per task after its handler fails (a TaskBatch's spec.retry wins)")
@pass_globals
def tasks(g: Globals, redis_url: str | None, max_retries: int) -> None:
    """Task batches on the data plane: submit, follow, collect, cancel; or run a batch locally."""
    click.get_current_context().obj = DataPlane(redis_url, max_retries, g.namespace or "default")


def _follow_options(fn: Any) -> Any:
    fn = click.option("-q", "--quiet", is_flag=True, help="no progress bar")(fn)
    fn = click.option("--timeout", type=float, metavar="SECONDS",
                      help="give up following after this long (exit 1)  [default: no limit]")(fn)
    return fn


@tasks.command()
@click.argument("file", metavar="FILE")
@click.option("--session", metavar="ID",
              help="session id (a TaskBatch's name); re-submitting the same file under it resumes  "
                   "[default: a UUID, run by the namespace's TaskPool 'default']")
@click.option("--append", is_flag=True, help="add the tasks to the existing --session instead of starting it")
@click.option("--wait", is_flag=True, help="follow with a progress bar until every task is done")
@_follow_options
@runs_async
async def submit(file: str, session: str | None, append: bool, wait: bool, timeout: float | None, quiet: bool) -> int:
    """Submit the tasks of FILE (JSON lines, one event object per line; - reads standard input).

    Prints the session id. With --wait: exit 0 when every task finished, 3 when some failed or
    were cancelled, 1 at --timeout (the batch carries on)."""
    plane = _data_plane()
    positive("timeout", timeout)
    if append and not session:
        raise ValueError("--append needs --session: the session to add the tasks to")
    task_list = read_jsonl(file)
    async with await _connector(plane) as connector:
        try:
            sub = await connector.send(task_list, session_id=session, append=append)
        except BatchExists as exc:
            raise ValueError(f"session {session!r} already holds {exc.held} different tasks; give another --session, "
                             "or --append to add these tasks to it") from None
        sid = sub["session_id"]
        click.echo(sid)
        if not wait:
            return 0
        try:
            total = len(task_list) if not append else int((await connector.store.meta(sid)).get("total", 0))
            counts = await follow(connector, sid, total, timeout, quiet)
        except (asyncio.CancelledError, KeyboardInterrupt):
            error(f"stopped following; session {sid!r} carries on", "")
            raise
        return 0 if counts["failed"] == 0 and counts["cancelled"] == 0 else FAILED


@tasks.command()
@click.argument("session", metavar="SESSION")
@output_option("table", "json", "yaml", default="table")
@runs_async
async def status(session: str, output: str) -> int:
    """Show how far SESSION's batch is: tasks per state and failed attempts per error kind."""
    plane = _data_plane()
    async with await _connector(plane) as connector:
        meta, counts, errors = await connector.store.snapshot(session)
    if not meta:
        error(f"no session {session!r} in the data plane (namespace {plane.namespace!r}); check -n and --redis-url")
        return UNFINISHED
    total = int(meta.get("total", 0))
    document = {"session_id": session, "total": total, "done": _done(counts), "cancelled": meta.get("cancelled") == "1",
                "suspended": meta.get("suspended") == "1", "tasks": counts, "failed_attempts": errors}
    if output != "table":
        print_document(document, output)
        return 0
    print_table(["SESSION", "TOTAL", "DONE", *(s.upper() for s in counts), "STATUS"],
                [[session, total, _done(counts), *counts.values(),
                  "Cancelled" if document["cancelled"] else "Suspended" if document["suspended"]
                  else "Done" if _done(counts) >= total else "Running"]])
    return 0


@tasks.command()
@click.argument("session", metavar="SESSION")
@output_option("jsonl", "json", "yaml", "table", default="jsonl",
               help="jsonl: one {task_id, state, output|error} per line; json/yaml: the HTC-Grid results dict")
@click.option("--wait", is_flag=True, help="follow with a progress bar until every task is done, then print")
@_follow_options
@runs_async
async def results(session: str, output: str, wait: bool, timeout: float | None, quiet: bool) -> int:
    """Print each task's result. Exit 3 when some tasks failed or were cancelled."""
    plane = _data_plane()
    positive("timeout", timeout)
    async with await _connector(plane) as connector:
        if wait:
            meta = await connector.store.meta(session)
            if meta:
                await follow(connector, session, int(meta.get("total", 0)), timeout, quiet)
        return await print_results(connector, session, output)


@tasks.command()
@click.argument("session", metavar="SESSION")
@output_option("json", "yaml", default="json")
@runs_async
async def cancel(session: str, output: str) -> int:
    """Cancel every task of SESSION not yet finished; print what was cancelled."""
    plane = _data_plane()
    async with await _connector(plane) as connector:
        if not await connector.store.exists(session):
            error(f"no session {session!r} in the data plane (namespace {plane.namespace!r}); check -n and --redis-url")
            return UNFINISHED
        report = await connector.cancel_sessions([session])
    print_document(report, output)
    return 0


@tasks.command()
@click.argument("file", metavar="FILE")
@click.option("--local", is_flag=True,
              help="run the workers on this machine (on a cluster, create a TaskBatch and use submit)")
@click.option("--handler", required=True, metavar="MODULE:FUNCTION", help="the handler: function(event, context) -> dict")
@click.option("--workers", type=int, default=2, help="worker processes")
@click.option("--session", metavar="ID", help="session id  [default: generated]")
@click.option("--heartbeat", type=float, default=2.0, metavar="SECONDS", help="time between lease renewals")
@click.option("--lease", type=float, default=10.0, metavar="SECONDS", help="how long a task's lease lasts")
@click.option("--timeout-per-task", type=float, metavar="SECONDS", help="fail a task running longer than this  [default: no limit]")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="give up after this long: cancel what is left, exit 1  [default: no limit]")
@output_option("jsonl", "json", "yaml", "table", "none", default="jsonl", help="how to print the results at the end")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@runs_async
async def run(file: str, local: bool, handler: str, workers: int, session: str | None, heartbeat: float, lease: float,
              timeout_per_task: float | None, timeout: float | None, output: str, quiet: bool) -> int:
    """Run the tasks of FILE here: local worker processes against your Redis.

    Whatever ends the run early (a timeout, every worker dead, Ctrl-C) cancels the tasks it
    leaves unfinished: nothing stays queued with no workers."""
    plane = _data_plane()
    if not local:
        raise ValueError("tasks run needs --local (on a cluster, create a TaskBatch and use: gridctl tasks submit)")
    for name, value in (("timeout", timeout), ("timeout-per-task", timeout_per_task), ("heartbeat", heartbeat),
                        ("lease", lease)):
        positive(name, value)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if lease <= heartbeat:
        raise ValueError(f"--lease ({lease:g}) must exceed --heartbeat ({heartbeat:g})")
    load_handler(handler)  # a bad handler is named here, not by N dying workers
    task_list = read_jsonl(file)
    assert plane.redis_url is not None
    local_run = LocalRun(plane.redis_url, handler, workers, heartbeat, lease, timeout_per_task)
    async with await _connector(plane) as connector:
        # A session of its own (never a pool's): the local workers are the only ones meant to run it.
        sub = await connector.send(task_list, session_id=session or f"local-{uuid.uuid4().hex[:12]}")
        sid = sub["session_id"]
        spawned = spawn_workers(local_run, sid, connector.store.prefix)
        stop = asyncio.Event()
        sweeper = asyncio.create_task(Sweeper(connector.store, sid, interval=0.5).run(stop))
        finished = False
        try:
            counts = await follow(connector, sid, len(task_list), timeout, quiet, spawned)
            finished = True
        finally:
            stop.set()
            await sweeper
            if not finished:
                cancelled = await connector.cancel_sessions([sid])
                error(f"cancelled the {cancelled[sid]['total_cancelled_tasks']} unfinished tasks of session {sid!r}", "")
            await asyncio.to_thread(stop_workers, spawned, 0.0 if finished else WORKER_GRACE)
        if output != "none":
            await print_results(connector, sid, output)
    return 0 if counts["failed"] == 0 and counts["cancelled"] == 0 else FAILED
