"""docs/operations.md: the benchmark commands run as written, at sizes that fit in the suite.

The figures on the page come from these commands at the page's sizes (minutes each); here they run
with a few objects, one round and a short window, against a baseline revision of this checkout,
so the harness (emulator, operator process, Redis, the --baseline tree) is known to work.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from .snippets import ROOT, block, run_shell, user_env

PAGE = "docs/operations.md"


@pytest.mark.timeout(300)
def test_the_benchmark_commands_run(tmp_path: pathlib.Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the benchmark's --baseline needs this git checkout")
    baseline = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    b = block(PAGE, ".venv/bin/python -m bench.session_start --kind sessions --count 200 1000")
    replace = {"--count 200 1000": "--count 5 --rounds 1", "--count 100 --baseline 3eab366":
               f"--count 3 --rounds 1 --window 1 --baseline {baseline}", ".venv/bin/python": sys.executable}
    script_env = user_env()
    result = run_shell(b, ROOT, script_env, replace=replace, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "5 GridSessions applied by 8 appliers" in out and "x floor" in out
    assert "3 TaskBatches applied at once" in out and "3 TaskPools applied at once" in out
    assert f"gridop at {baseline}" in out
