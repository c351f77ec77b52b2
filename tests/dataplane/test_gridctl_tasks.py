"""gridctl tasks against a real Redis: local runs, submit/results/cancel, bad input."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

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
    assert [r["task_id"] for r in rows] == [f"local-1_{i}" for i in range(25)]
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
    assert json.loads(results.stdout)["cancelled"] == ["later_0", "later_1"]
    assert results.returncode == 3, "a batch with cancelled tasks did not all finish"
    nosuch = gridctl("tasks", "--redis-url", redis_url, "cancel", "nosuch")
    assert (nosuch.returncode, nosuch.stdout) == (1, "")
    assert nosuch.stderr == "Error: no session 'nosuch' in the data plane (namespace 'default'); check -n and --redis-url\n"


def test_a_session_id_in_use_points_at_append(redis_url: str, tmp_path: pathlib.Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"a": 1}\n')
    second.write_text('{"b": 1}\n{"b": 2}\n')
    assert gridctl("tasks", "--redis-url", redis_url, "submit", str(first), "--session", "s").returncode == 0
    taken = gridctl("tasks", "--redis-url", redis_url, "submit", str(second), "--session", "s")
    assert taken.returncode == 2
    assert taken.stderr == ("Error: session 's' already holds 1 different tasks; give another --session, "
                            "or --append to add these tasks to it\n")
    appended = gridctl("tasks", "--redis-url", redis_url, "submit", str(second), "--session", "s", "--append")
    assert appended.returncode == 0, appended.stderr
    status = gridctl("tasks", "--redis-url", redis_url, "status", "s", "-o", "json")
    assert json.loads(status.stdout)["total"] == 3


def test_read_commands_print_tables_json_and_yaml(redis_url: str) -> None:
    tasks = "".join(json.dumps({"x": i}) + "\n" for i in range(6))
    run = gridctl("tasks", "--redis-url", redis_url, "run", "--local", "-", "--handler", "tests.dataplane.handlers:echo",
                  "--workers", "1", "--session", "shown", "-o", "table", stdin=tasks)
    assert run.returncode == 0, run.stderr
    table = run.stdout.splitlines()
    assert table[0].split() == ["TASK", "STATE", "OUTPUT", "/", "ERROR"] and len(table) == 7
    assert table[1].split()[:2] == ["shown_0", "finished"] and '{"echo": {"x": 0}' in table[1]
    # Piped, the progress is plain lines with the rate and the ETA.
    assert "shown  6/6 (100%)" in run.stderr and "tasks/s" in run.stderr and "ETA" in run.stderr

    status = gridctl("tasks", "--redis-url", redis_url, "status", "shown", "-o", "yaml")
    doc = yaml.safe_load(status.stdout)
    assert status.returncode == 0 and doc["total"] == 6 and doc["done"] == 6 and doc["tasks"]["finished"] == 6
    table = gridctl("tasks", "--redis-url", redis_url, "status", "shown").stdout.splitlines()
    assert table[0].split()[:3] == ["SESSION", "TOTAL", "DONE"] and table[1].split()[:4] == ["shown", "6", "6", "0"]
    assert table[1].split()[-1] == "Done"
    results = gridctl("tasks", "--redis-url", redis_url, "results", "shown", "-o", "yaml")
    assert yaml.safe_load(results.stdout)["finished"] == [f"shown_{i}" for i in range(6)]
    cancel = gridctl("tasks", "--redis-url", redis_url, "cancel", "shown", "-o", "yaml")
    assert yaml.safe_load(cancel.stdout)["shown"]["total_cancelled_tasks"] == 0
    missing = gridctl("tasks", "--redis-url", redis_url, "status", "nosuch")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: no session 'nosuch' in the data plane")


def test_malformed_files_are_refused_before_anything_is_sent(redis_url: str, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": 1}\n[1, 2]\n')
    result = gridctl("tasks", "--redis-url", redis_url, "submit", str(bad))
    assert result.returncode == 2 and "bad.jsonl:2: each line must be a JSON object" in result.stderr


def test_a_local_run_whose_workers_all_die_ends_with_exit_1_and_cancels_the_rest(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    result = gridctl("tasks", "--redis-url", redis_url, "run", "--local", "-", "--handler",
                     "tests.dataplane.handlers:acrashes", "--workers", "2", "--session", "dies", "-o", "none",
                     stdin='{"poison": true}\n' * 4)
    assert result.returncode == 1, result.stderr
    assert "all 2 local workers exited (exit codes 1, 1) with 4 tasks unfinished" in result.stderr
    assert "cancelled the 4 unfinished tasks of session 'dies'" in result.stderr
    assert "Traceback" not in result.stderr


def test_timeouts_say_the_work_did_not_finish(redis_url: str, tmp_path: pathlib.Path) -> None:
    slow = '{"seconds": 30}\n' * 2
    run = gridctl("tasks", "--redis-url", redis_url, "run", "--local", "-", "--handler",
                  "tests.dataplane.handlers:slow", "--workers", "1", "--timeout", "2", "--session", "late", "-o", "none",
                  stdin=slow)
    assert run.returncode == 1 and "2 of 2 tasks of session 'late' unfinished after 2s" in run.stderr
    submit = gridctl("tasks", "--redis-url", redis_url, "submit", "-", "--session", "nobody", "--wait",
                     "--timeout", "1", "-q", stdin=slow)
    assert submit.returncode == 1 and "unfinished after 1s" in submit.stderr


def test_usage_errors_name_the_culprit_with_exit_2(redis_url: str, tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"a": 1}\n')
    base = ["tasks", "--redis-url", redis_url, "run", "--local", str(tasks)]
    cases = [
        ([*base, "--handler", "tests.dataplane.handlers:echo", "--workers", "0"], "--workers must be at least 1, got 0"),
        ([*base, "--handler", "tests.dataplane.handlers:echo", "--timeout-per-task", "-1"],
         "--timeout-per-task must be positive, got -1"),
        ([*base, "--handler", "nosuchmodule:fn"], "cannot import 'nosuchmodule'"),
        ([*base, "--handler", "tests.dataplane.handlers:echo", "--lease", "1", "--heartbeat", "2"],
         "--lease (1) must exceed --heartbeat (2)"),
        (["tasks", "--redis-url", redis_url, "submit", str(tmp_path / "missing.jsonl")],
         "missing.jsonl': No such file or directory"),
    ]
    for argv, message in cases:
        result = gridctl(*argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_unreachable_redis_is_named(tmp_path: pathlib.Path) -> None:
    result = gridctl("tasks", "--redis-url", "redis://127.0.0.1:1/0", "submit", "-", stdin='{"a": 1}\n')
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach Redis at 127.0.0.1:1") and "check --redis-url" in result.stderr


@pytest.mark.parametrize("after", [1.5, 3.0])
def test_ctrl_c_stops_a_local_run_cleanly_and_cancels_what_is_left(redis_url: str, after: float) -> None:
    """Ctrl-C reaches the whole foreground process group, early (workers just started) or late; the
    run ends as interrupted (130) and cancels what is left, never as "every worker exited"."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "gridop.cli.gridctl", "tasks", "--redis-url", redis_url, "run", "--local", "-",
         "--handler", "tests.dataplane.handlers:slow", "--workers", "1", "--session", "ctrl-c", "-o", "none"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )
    proc.stdin.write('{"seconds": 30}\n' * 3)
    proc.stdin.close()
    proc.stdin = None
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: gridctl and its workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "local workers exited" not in err and "without draining" not in err, err
    assert err.endswith("interrupted\n"), err
    if after >= 3:
        assert "cancelled the 3 unfinished tasks of session 'ctrl-c'" in err


def test_session_commands_check_the_name_and_file_before_the_cluster(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(tmp_path / "missing-kubeconfig")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gridop.cli.gridctl", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env=env)

    bad_name = run("session", "start", "Bad_Name", "--node", "w1", "--config", str(tmp_path / "c.json"))
    assert bad_name.returncode == 2 and "'Bad_Name' is not a valid session name" in bad_name.stderr
    no_file = run("session", "start", "ok-name", "--node", "w1", "--config", str(tmp_path / "c.json"))
    assert no_file.returncode == 2 and "no such file" in no_file.stderr
    no_cluster = run("session", "list")
    assert no_cluster.returncode == 2 and "cannot read kubeconfig" in no_cluster.stderr
    for r in (bad_name, no_file, no_cluster):
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
