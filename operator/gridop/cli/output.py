"""How gridctl prints: kubectl-style tables, `-o json|yaml` documents, and a progress bar.

Everything for a person goes through rich (bold headers and a live bar on a terminal; plain,
uncoloured text when piped). Machine output (`-o json|yaml|jsonl|name`) is written verbatim.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])

#: A piped table is never wrapped or truncated at 80 columns: scripts cut its columns.
_PIPE_WIDTH = 10_000


def stdout() -> Console:
    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if tty else _PIPE_WIDTH, highlight=False, soft_wrap=not tty)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def output_option(*choices: str, default: str, help: str = "output format") -> Callable[[F], F]:
    """`-o/--output`, as kubectl spells it, on every command that reads something."""
    return click.option("-o", "--output", type=click.Choice(choices), default=default, show_default=True, help=help)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A kubectl-style table: upper-case headers, no borders, three spaces between columns."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold",
                  collapse_padding=True)
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(Text("<none>" if v in (None, "") else str(v)) for v in row))
    stdout().print(table)


def print_document(document: Any, output: str) -> None:
    """`-o json` / `-o yaml`: the document as is, for jq and yq."""
    if output == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif output == "yaml":
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    else:
        raise AssertionError(output)
    sys.stdout.flush()


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as one document, the way `kubectl get -o json` prints a list."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


class _Rate(ProgressColumn):
    """Tasks per second over the last few seconds (rich's speed estimate)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- tasks/s" if speed is None else f"{speed:,.0f} tasks/s", style="progress.data.speed")


class _BarAndStates(Progress):
    """The bar on one line and, under it, the session and its tasks per state (fits 80 columns)."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text.assemble((task.description, "bold"), "  ", task.fields["states"])


class TaskProgress:
    """The bar `tasks submit --wait`, `tasks results --wait` and `tasks run --local` show on stderr:
    done/total, percent, rate, elapsed, ETA and the count of each state. On a terminal it is a live
    bar; piped (CI logs), it prints a line every `every` seconds and the last one at the end."""

    def __init__(self, total: int, label: str, quiet: bool = False, every: float = 10.0) -> None:
        self.quiet, self.every = quiet, every
        console = stderr()
        self.live = console.is_terminal
        self.progress = _BarAndStates(
            BarColumn(bar_width=24), MofNCompleteColumn(), TaskProgressColumn(), _Rate(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, speed_estimate_period=10.0,
        )
        self.task = self.progress.add_task(label, total=total or None, states="")
        self._last_line, self._printed = 0.0, ""

    def __enter__(self) -> TaskProgress:
        if self.live and not self.quiet:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.quiet:
            return
        if self.live:
            self.progress.stop()
        elif self._printed != self.line():
            self._print()

    def update(self, counts: dict[str, int]) -> None:
        done = counts["finished"] + counts["failed"] + counts["cancelled"]
        states = (f"finished {counts['finished']}  failed {counts['failed']}  cancelled {counts['cancelled']}  "
                  f"running {counts['processing']}  retrying {counts['retrying']}")
        self.progress.update(self.task, completed=done, states=states)
        if not self.quiet and not self.live and time.monotonic() - self._last_line >= self.every:
            self._print()

    def line(self) -> str:
        """The bar's figures as one plain line, for logs."""
        task = self.progress.tasks[0]
        speed = task.finished_speed or task.speed
        total = int(task.total or 0)
        percent = f"{100 * task.completed / total:.0f}%" if total else "-"
        eta = "-" if task.time_remaining is None else f"{task.time_remaining:.0f}s"
        rate = "-" if speed is None else f"{speed:,.0f}"
        return (f"{task.description}  {int(task.completed)}/{total} ({percent})  {rate} tasks/s  "
                f"elapsed {task.elapsed or 0:.0f}s  ETA {eta}  {task.fields['states']}")

    def _print(self) -> None:
        self._last_line, self._printed = time.monotonic(), self.line()
        sys.stderr.write(self._printed + "\n")
        sys.stderr.flush()
