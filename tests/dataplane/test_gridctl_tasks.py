"""gridctl tasks against a real Redis: local runs, submit/results/cancel, bad input."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def gridctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridop.cli.gridctl", *args], cwd=ROOT, capture_output=True,
                          text=True, input=stdin, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_run_local_runs_a_file_of_tasks_with_local_workers(redis_url: str, tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(25)))
    result = gridctl("tasks", "--redis-url", redis_url, "run", "--local", str(tasks),
                     "--handler", "tests.dataplane.handlers:echo", "--workers", "2", "--session", "local-1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["task_id"] for r in rows] == [f"local-1-{i}" for i in range(25)]
    assert rows[7]["output"]["echo"] == {"x": 7} and {r["state"] for r in rows} == {"finished"}
    assert "25/25" in result.stderr


def test_failures_set_the_exit_code_and_carry_the_error(redis_url: str, tmp_path: pathlib.Path) -> None:
    result = gridctl("tasks", "--redis-url", redis_url, "--max-retries", "0", "run", "--local", "-",
                     "--handler", "tests.dataplane.handlers:boom", "--workers", "1", "-q", stdin='{"x": 9}\n')
    assert result.returncode == 3
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["state"] == "failed" and row["error"] == "ValueError: bad input: 9"


def test_submit_then_cancel_then_results(redis_url: str, tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"a": 1}\n{"a": 2}\n')
    sub = gridctl("tasks", "--redis-url", redis_url, "submit", str(tasks), "--session", "later")
    assert sub.returncode == 0 and sub.stdout.strip() == "later"
    cancel = gridctl("tasks", "--redis-url", redis_url, "cancel", "later")
    assert json.loads(cancel.stdout)["later"]["cancelled_pending"] == 2
    results = gridctl("tasks", "--redis-url", redis_url, "results", "later", "-o", "json")
    assert json.loads(results.stdout)["cancelled"] == ["later-0", "later-1"]


def test_malformed_files_are_refused_before_anything_is_sent(redis_url: str, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": 1}\n[1, 2]\n')
    result = gridctl("tasks", "--redis-url", redis_url, "submit", str(bad))
    assert result.returncode == 2 and "bad.jsonl:2: each line must be a JSON object" in result.stderr
