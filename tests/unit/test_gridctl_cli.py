"""gridctl's command line as a user meets it: help on everything, one-line usage errors, outputs."""

from __future__ import annotations

import json

import click
import pytest
import yaml

from gridop.cli.gridctl import cli, main
from gridop.cli.output import TaskProgress


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def test_every_command_and_option_has_help_and_says_its_default() -> None:
    commands = _commands(cli)
    assert len(commands) >= 14  # root, 3 groups, their verbs
    for path, command in commands:
        assert command.help, f"gridctl {' '.join(path)} has no help text"
        for param in command.params:
            if not isinstance(param, click.Option) or param.name in ("help", "version"):
                continue
            where = f"gridctl {' '.join(path)} {param.opts[0]}"
            assert param.help, f"{where} has no help text"
            # A default is shown by click, or written in the help ("[default: ...]"), or there is none
            # to show: a flag (off), a required option; an environment variable shown stands for one.
            default = param.to_info_dict()["default"]  # None when there is none (click's own sentinel)
            shown = param.show_default is not False and default is not None and not param.is_flag
            told = "[default:" in param.help or param.show_envvar
            assert shown or told or param.is_flag or param.required, f"{where}: default?"


@pytest.mark.parametrize("argv", [
    ["session", "list"], ["session", "get", "x"], ["tasks", "results", "s"], ["tasks", "status", "s"],
    ["tasks", "cancel", "s"],
])
def test_every_read_command_prints_json_and_yaml(argv: list[str]) -> None:
    command = cli
    for name in argv:
        if not isinstance(command, click.Group):
            break
        command = command.get_command(click.Context(command), name)  # type: ignore[assignment]
    output = next(p for p in command.params if p.name == "output")
    assert {"json", "yaml"} <= set(output.type.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("argv", "message"), [
    (["session", "start", "x", "--node", "n"], "Missing option '--config'. (see 'gridctl session start --help')"),
    (["gs", "ls", "--bogus"], "No such option '--bogus'"),
    (["session", "get", "x", "-o", "xml"], "Invalid value for '-o' / '--output': 'xml' is not one of"),
    (["tasks", "run", "f", "--handler", "m:f", "--workers", "two"], "'two' is not a valid integer"),
    (["sessions", "frobnicate"], "No such command 'frobnicate'"),
    (["tasks", "submit", "-", "--redis-url", "redis://x"], "No such option '--redis-url'"),
])
def test_usage_errors_are_one_line_naming_the_culprit(argv: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_missing_redis_url_and_run_without_local_are_named(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDOP_REDIS_URL", raising=False)
    assert main(["tasks", "status", "s"]) == 2
    assert "--redis-url (or GRIDOP_REDIS_URL) is required" in capsys.readouterr().err
    assert main(["tasks", "--redis-url", "redis://127.0.0.1:1/0", "run", "f", "--handler", "m:f"]) == 2
    assert "tasks run needs --local" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "gridctl, version" in capsys.readouterr().out
    assert main(["tasks", "run", "-h"]) == 0
    out = capsys.readouterr().out
    assert "--workers INTEGER" in out and "[default: 2]" in out and "[required]" in out
    assert main([]) == 2  # no command: the help, on stderr
    assert "Commands:" in capsys.readouterr().err


def test_the_piped_progress_shows_rate_eta_and_states(capsys: pytest.CaptureFixture[str]) -> None:
    counts = {"finished": 0, "failed": 0, "cancelled": 0, "processing": 0, "retrying": 0}
    with TaskProgress(100, "batch-1", every=0.0) as bar:
        for done in (10, 40, 100):
            bar.update({**counts, "finished": done - 1, "failed": 1, "processing": 4})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("batch-1  100/100 (100%)  ")
    assert "tasks/s" in lines[-1] and "ETA 0s" in lines[-1] and "finished 99  failed 1" in lines[-1]
    assert "ETA" in lines[1] and "40/100 (40%)" in lines[1]


def test_quiet_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    counts = {"finished": 5, "failed": 0, "cancelled": 0, "processing": 0, "retrying": 0}
    with TaskProgress(5, "q", quiet=True) as bar:
        bar.update(counts)
    assert capsys.readouterr().err == ""


def test_documents_are_verbatim_json_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    from gridop.cli.output import as_list, print_document

    doc = as_list([{"metadata": {"name": "a"}}])
    print_document(doc, "json")
    assert json.loads(capsys.readouterr().out) == doc
    print_document(doc, "yaml")
    assert yaml.safe_load(capsys.readouterr().out) == doc
