"""`gridctl tasks`: submit a JSONL file of tasks, follow it, collect results, cancel; or run locally.

    gridctl tasks submit tasks.jsonl --redis-url redis://localhost:6379/0 [--session my-run] [--wait]
    gridctl tasks results my-run [-o jsonl]
    gridctl tasks cancel my-run
    gridctl tasks run --local tasks.jsonl --handler mymod:handle --redis-url redis://localhost:6379/0 --workers 2

Exit codes say whether the work finished: 0 every task finished; 3 some failed or were
cancelled; 1 the work did not finish (a timeout, every local worker died, Redis unreachable);
2 a usage error (bad option, unreadable file); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any, TextIO

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..client.tasks import AsyncGridConnector
from ..tasks.connection import address_of
from ..tasks.states import TaskState
from ..tasks.sweeper import Sweeper
from ..tasks.worker import load_handler

UNFINISHED = 1  # exit code: the work did not finish
FAILED = 3  # exit code: it finished, but some tasks failed or were cancelled


class Unfinished(Exception):
    """The work did not finish; the message says why (exit code 1)."""


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


def progress_line(counts: dict[str, int], total: int, width: int = 30) -> str:
    done = counts["finished"] + counts["failed"] + counts["cancelled"]
    filled = int(width * done / total) if total else width
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  finished {counts['finished']}  "
            f"failed {counts['failed']}  cancelled {counts['cancelled']}  running {counts['processing']}  "
            f"retrying {counts['retrying']}")


async def follow(connector: AsyncGridConnector, sid: str, total: int, timeout: float | None, quiet: bool,
                 workers: list[subprocess.Popen[bytes]] | None = None) -> dict[str, int]:
    """Show a progress bar until every task is terminal; raises Unfinished when the timeout
    passes or every local worker has exited first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last = ""
    while True:
        counts = await connector.store.counts(sid)
        line = progress_line(counts, total)
        if not quiet and line != last:
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = line
        done = counts["finished"] + counts["failed"] + counts["cancelled"]
        if done >= total:
            break
        if deadline is not None and time.monotonic() > deadline:
            _end_line(quiet, tty)
            raise Unfinished(f"{total - done} of {total} tasks of session {sid!r} unfinished after {timeout:g}s")
        if workers and all(w.poll() is not None for w in workers):
            counts = await connector.store.counts(sid)
            if counts["finished"] + counts["failed"] + counts["cancelled"] < total:
                _end_line(quiet, tty)
                codes = ", ".join(str(w.returncode) for w in workers)
                raise Unfinished(f"all {len(workers)} local workers exited (exit codes {codes}) with "
                                 f"{total - counts['finished'] - counts['failed'] - counts['cancelled']} tasks unfinished")
        await asyncio.sleep(0.2)
    _end_line(quiet, tty)
    return counts


def _end_line(quiet: bool, tty: bool) -> None:
    if not quiet and tty:
        print(file=sys.stderr)


async def print_results(connector: AsyncGridConnector, sid: str, output: str) -> int:
    meta = await connector.store.meta(sid)
    if not meta:
        print(f"Error: no session {sid!r} in the data plane", file=sys.stderr)
        return UNFINISHED
    total = int(meta["total"])
    submission = {"session_id": sid, "task_ids": [f"{sid}-{i}" for i in range(total)]}
    results = await connector.get_results(submission)
    if output == "json":
        print(json.dumps(results, indent=2))
    else:
        states = {tid: TaskState.FINISHED for tid in results["finished"]}
        states.update({tid: TaskState.FAILED for tid in results["failed"]})
        outputs = dict(zip(results["finished"], results["finished_OUTPUT"]))
        errors = dict(zip(results["failed"], results["failed_OUTPUT"]))
        for tid in results["finished"] + results["failed"] + results["cancelled"]:
            row: dict[str, Any] = {"task_id": tid, "state": states.get(tid, TaskState.CANCELLED).value}
            if tid in outputs:
                row["output"] = json.loads(outputs[tid]) if outputs[tid] else None
            if tid in errors:
                row["error"] = errors[tid]
            print(json.dumps(row))
    return 0 if not results["failed"] else FAILED


def spawn_workers(args: argparse.Namespace, sid: str, prefix: str) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "gridop", "worker", "--redis-url", args.redis_url, "--session", sid,
               "--handler", args.handler, "--key-prefix", prefix, "--log-format", "text", "--log-level", "WARNING",
               "--heartbeat", str(args.heartbeat), "--lease", str(args.lease)]
    if args.timeout_per_task:
        command += ["--timeout", str(args.timeout_per_task)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    return [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(args.workers)]


WORKER_GRACE = 5.0  # seconds local workers get to stop before they are killed, when a run ends early


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


def check_options(args: argparse.Namespace) -> None:
    """Usage errors, before anything is read or sent (ValueError: exit code 2)."""
    if not args.redis_url:
        raise ValueError("--redis-url (or GRIDOP_REDIS_URL) is required")
    for name in ("timeout", "timeout_per_task", "heartbeat", "lease"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    if getattr(args, "workers", 1) < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.verb == "run":
        if not args.local:
            raise ValueError("tasks run needs --local (on a cluster, create a TaskBatch and use submit)")
        if args.lease <= args.heartbeat:
            raise ValueError(f"--lease ({args.lease:g}) must exceed --heartbeat ({args.heartbeat:g})")
        load_handler(args.handler)  # a bad handler is named here, not by N dying workers


async def _reachable(url: str) -> None:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
    except RedisError as exc:
        raise Unfinished(f"cannot reach Redis at {address_of(url)} ({exc}); check --redis-url") from exc
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> int:
    check_options(args)
    tasks = read_jsonl(args.file) if args.verb in ("submit", "run") else None
    await _reachable(args.redis_url)
    config = {"redis_url": args.redis_url, "namespace": args.namespace or "default", "max_retries": args.max_retries}
    async with AsyncGridConnector(config) as connector:
        if args.verb == "submit":
            assert tasks is not None
            sub = await connector.send(tasks, session_id=args.session)
            print(sub["session_id"])
            if args.wait:
                try:
                    counts = await follow(connector, sub["session_id"], len(tasks), args.timeout, args.quiet)
                except asyncio.CancelledError:
                    print(f"stopped following; session {sub['session_id']!r} carries on", file=sys.stderr)
                    raise
                return 0 if counts["failed"] == 0 and counts["cancelled"] == 0 else FAILED
            return 0
        if args.verb == "results":
            if args.wait:
                meta = await connector.store.meta(args.session)
                await follow(connector, args.session, int(meta.get("total", 0)), args.timeout, args.quiet)
            return await print_results(connector, args.session, args.output)
        if args.verb == "cancel":
            report = await connector.cancel_sessions([args.session])
            print(json.dumps(report, indent=2))
            return 0
        if args.verb == "run":
            assert tasks is not None
            return await _run_local(args, connector, tasks)
    raise AssertionError(args.verb)


async def _run_local(args: argparse.Namespace, connector: AsyncGridConnector, tasks: list[dict[str, Any]]) -> int:
    """Run the batch with local worker processes. Whatever ends the run early (a timeout, dead
    workers, Ctrl-C), the unfinished tasks are cancelled: nothing is left queued with no workers."""
    sub = await connector.send(tasks, session_id=args.session)
    sid = sub["session_id"]
    workers = spawn_workers(args, sid, connector.store.prefix)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(Sweeper(connector.store, sid, interval=0.5).run(stop))
    finished = False
    try:
        counts = await follow(connector, sid, len(tasks), args.timeout, args.quiet, workers)
        finished = True
    finally:
        stop.set()
        await sweeper
        if not finished:
            cancelled = await connector.cancel_sessions([sid])
            print(f"cancelled the {cancelled[sid]['total_cancelled_tasks']} unfinished tasks of session {sid!r}",
                  file=sys.stderr)
        await asyncio.to_thread(stop_workers, workers, 0.0 if finished else WORKER_GRACE)
    if args.output != "none":
        await print_results(connector, sid, args.output)
    return 0 if counts["failed"] == 0 and counts["cancelled"] == 0 else FAILED


def add_parser(kinds: Any) -> None:
    tasks = kinds.add_parser("tasks", aliases=["tb"], help="task batches on the data plane")
    tasks.add_argument("--redis-url", default=os.environ.get("GRIDOP_REDIS_URL"), help="data plane [GRIDOP_REDIS_URL]")
    tasks.add_argument("--max-retries", type=int, default=3)
    verbs = tasks.add_subparsers(dest="verb", required=True)

    submit = verbs.add_parser("submit", help="submit the tasks of a JSONL file (one event object per line)")
    submit.add_argument("file", help="JSONL file, or - for standard input")
    submit.add_argument("--session", help="session id (default: generated); re-submitting the same file resumes")
    submit.add_argument("--wait", action="store_true", help="follow with a progress bar until all tasks are done")
    submit.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)")
    submit.add_argument("-q", "--quiet", action="store_true")

    results = verbs.add_parser("results", help="print each task's result (JSON lines), or the HTC-Grid dict")
    results.add_argument("session")
    results.add_argument("-o", "--output", choices=["jsonl", "json"], default="jsonl")
    results.add_argument("--wait", action="store_true")
    results.add_argument("--timeout", type=float)
    results.add_argument("-q", "--quiet", action="store_true")

    cancel = verbs.add_parser("cancel", help="cancel every task not yet finished")
    cancel.add_argument("session")

    local = verbs.add_parser("run", help="run a batch here: local worker processes, your Redis")
    local.add_argument("file")
    local.add_argument("--local", action="store_true", help="run the workers on this machine")
    local.add_argument("--handler", required=True, help="module:function(event, context) -> dict")
    local.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    local.add_argument("--session", help="session id (default: generated)")
    local.add_argument("--heartbeat", type=float, default=2.0, help="seconds between lease renewals (default: 2)")
    local.add_argument("--lease", type=float, default=10.0, help="seconds a task's lease lasts (default: 10)")
    local.add_argument("--timeout-per-task", type=float, help="fail a task running longer than this (seconds)")
    local.add_argument("--timeout", type=float, help="give up after this many seconds: cancel what is left, exit 1")
    local.add_argument("-o", "--output", choices=["jsonl", "json", "none"], default="jsonl")
    local.add_argument("-q", "--quiet", action="store_true")
