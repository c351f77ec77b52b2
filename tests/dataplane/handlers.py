"""Handlers the data-plane tests run (importable as tests.dataplane.handlers:<name>)."""

import asyncio
import os
import time


def echo(event, context):
    return {"echo": event, "attempt": context.attempt}


def zero(event, context):
    return {}


async def aecho(event, context):
    await asyncio.sleep(0)
    return {"echo": event}


def flaky(event, context):
    """Fails on the first attempt, succeeds after."""
    if context.attempt == 1:
        raise RuntimeError(f"transient failure on {context.task_id}")
    return {"ok": True}


def boom(event, context):
    raise ValueError("bad input: " + str(event.get("x")))


def hang(event, context):
    if event.get("hang"):
        time.sleep(event.get("seconds", 30))
    return {"done": True}


def unserialisable(event, context):
    return {"when": object()}


def slow(event, context):
    time.sleep(event.get("seconds", 0.01))
    return {"pid": os.getpid()}


async def aslow(event, context):
    await asyncio.sleep(event.get("seconds", 0.01))
    return {"pid": os.getpid()}


def exits(event, context):
    """A task that calls sys.exit() (or raises another BaseException) when asked to."""
    import sys

    if event.get("exit"):
        sys.exit(3)
    if event.get("base"):
        raise GeneratorExit("a BaseException from the handler")
    return {"n": event.get("n")}


def crashes(event, context):
    """A poison task: it kills the whole worker process, every time."""
    if event.get("poison"):
        os._exit(1)
    time.sleep(0.01)
    return {"n": event.get("n")}


async def atimeout(event, context):
    await asyncio.sleep(event.get("seconds", 0))
    return {"slept": event.get("seconds", 0)}


def echo_slow(event, context):
    time.sleep(event.get("seconds", 0.003))
    return {"echo": event}


def sleepy_flaky(event, context):
    """Sleeps `seconds`; tasks marked `flaky` fail their first attempt."""
    time.sleep(event.get("seconds", 0))
    if event.get("flaky") and context.attempt == 1:
        raise RuntimeError(f"transient failure on {context.task_id}")
    return {"n": event.get("n")}


async def acrashes(event, context):
    """A poison task of an async handler (on the worker's own loop): it kills the worker process."""
    if event.get("poison"):
        os._exit(1)
    return {"n": event.get("n")}


def lambda_context(event, context):
    """What an HTC-Grid lambda reads from its context object."""
    return {"aws_request_id": context.aws_request_id, "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb, "remaining": context.get_remaining_time_in_millis(),
            "function_version": context.function_version, "log_stream_name": context.log_stream_name}


def ledger(event, context):
    """Writes the task's `n` to the file GRIDOP_TEST_LEDGER names, once per run of the handler (one
    short O_APPEND write: whole lines even from many processes), so a test counts executions."""
    time.sleep(event.get("seconds", 0.01))
    fd = os.open(os.environ["GRIDOP_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event['n']}\n".encode())
    finally:
        os.close(fd)
    return {"n": event["n"]}
