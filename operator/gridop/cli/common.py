"""What every gridctl command shares: the global flags, exit codes, and one-line errors.

Exit codes say whether the work finished: 0 done; 1 it did not finish (a timeout, the cluster or
Redis refused or was unreachable, every local worker died); 2 a usage error, named before
anything is sent; 3 it finished but some tasks failed or were cancelled; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import click
from redis.exceptions import RedisError

from ..client.console import ConsoleError
from ..client.tasks import UnknownSession
from ..kube import KubeError
from ..kube.access import AccessError

DONE = 0
UNFINISHED = 1
USAGE = 2
FAILED = 3
INTERRUPTED = 130

#: Every option shows its default in --help; -h works as --help.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True,
                                    "max_content_width": 100}


class Unfinished(Exception):
    """The work did not finish; the message says why (exit code 1)."""


@dataclasses.dataclass
class Globals:
    """The flags given before the command (`gridctl -n team-a session list`)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def error(message: str, prefix: str = "Error: ") -> None:
    click.echo(f"{prefix}{message}", err=True)


#: What a user can get wrong (or the cluster / Redis can refuse): one line, never a traceback.
USER_ERRORS = (ConsoleError, AccessError, Unfinished, ValueError, KubeError, OSError, RedisError)


def exit_code_for(exc: BaseException) -> int:
    """Print the one line that names what went wrong; return the exit code. None of these is a
    bug in gridctl, so none shows a traceback."""
    if isinstance(exc, ConsoleError):
        error(exc.message)
        return UNFINISHED
    if isinstance(exc, AccessError):
        error(str(exc))
        return USAGE
    if isinstance(exc, Unfinished):
        error(str(exc))
        return UNFINISHED
    if isinstance(exc, UnknownSession):
        error(str(exc))
        return UNFINISHED
    if isinstance(exc, ValueError):
        error(str(exc))
        return USAGE
    if isinstance(exc, KubeError):
        error(exc.api_message or str(exc), "Error from server: ")
        return UNFINISHED
    if isinstance(exc, OSError):
        error(f"cannot reach the cluster: {exc}")
        return UNFINISHED
    if isinstance(exc, RedisError):
        error(f"data plane: {exc}")
        return UNFINISHED
    raise exc


def runs_async(fn: Callable[..., Coroutine[Any, Any, int]]) -> Callable[..., int]:
    """A click command whose body is a coroutine: run it, and turn what users can get wrong (and
    Ctrl-C) into one line and an exit code."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> int:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except KeyboardInterrupt:
            error("interrupted", "")
            return INTERRUPTED
        except USER_ERRORS as exc:
            return exit_code_for(exc)

    return command


def pass_globals(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the command the global flags as its first argument."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        return fn(click.get_current_context().find_object(Globals) or Globals(), *args, **kwargs)

    return command


class AliasedGroup(click.Group):
    """A group whose commands answer to short names too (`gs`, `ls`), as kubectl's resources do."""

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = aliases or {}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        _, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else None), command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        if self.aliases:
            with formatter.section("Aliases"):
                formatter.write_dl(sorted(self.aliases.items()))


def positive(name: str, value: float | None) -> None:
    """A duration or count that must be above zero (ValueError names the flag: exit code 2)."""
    if value is not None and value <= 0:
        raise ValueError(f"--{name} must be positive, got {value:g}")

