"""The README's quick start on the cluster `make up` made, run as a user runs it: its shell block,
verbatim, with bash. It needs gridop installed by the chart (GRIDOP_E2E_EXTERNAL_OPERATOR=1), pods
that really run (a console to tail and type into: kind, not fake kubelets), gridctl on the PATH the
block sets, and the `default` namespace free of a session named drone-sim."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.docs.snippets import ROOT, block


def test_the_readme_quick_start_runs_as_written() -> None:
    if not os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        pytest.skip("e2e: the README's quick start needs gridop installed by the chart (`make up`) and "
                    "GRIDOP_E2E_EXTERNAL_OPERATOR=1")
    if shutil.which("kubectl") is None:
        pytest.skip("e2e: the README's quick start needs kubectl on the PATH")
    quick_start = block("README.md", 'export PATH="$PWD/.venv/bin:$PATH"')
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    # stdin is not a terminal: `gridctl console interact` types nothing and leaves at its end.
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", quick_start.text], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    try:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "gridsession.gridop.io/drone-sim created" in result.stdout
        assert "condition met" in result.stdout
        assert "drone-sim" in result.stdout and "Running" in result.stdout
        assert "[end of input]" in result.stderr
    finally:
        subprocess.run(["kubectl", "delete", "gs", "drone-sim", "--ignore-not-found", "--wait=false"],
                       capture_output=True, timeout=60)
        subprocess.run(["pkill", "-f", "port-forward svc/gridop-gateway"], capture_output=True)
