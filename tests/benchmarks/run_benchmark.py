"""Running a benchmark script as a file, as the README shows, for the benchmark smoke tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run `benchmarks/<script> <args>` on one thread, as the README shows; its output captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def records_of(result: subprocess.CompletedProcess) -> dict[str, dict]:
    """A successful run's JSON lines keyed by metric (the last record of each metric remains)."""
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return {record["metric"]: record for record in records}


def quick_run(script: str, *args: str) -> dict[str, dict]:
    """Run `benchmarks/<script> --quick <args>` on one thread; its JSON lines keyed by metric."""
    return records_of(run_script(script, "--quick", *args))
