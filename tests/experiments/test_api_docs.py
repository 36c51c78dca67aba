"""docs/api.md runs as written: every ```python block, each in a fresh interpreter, in a directory holding the two
debug runs its examples name (runs/debug-pretrain, runs/debug-cycle, made first with the commands the page shows);
each block asserts what it computes and prints a line that is checked here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from run_wm import DEBUG, ENV, REPO, wm

pytestmark = pytest.mark.slow  # starts `wm` subprocesses

PAGE = REPO / "docs" / "api.md"
# What each section's example prints, for the debug runs: a micro ViT (width 64, mean-pooled), a world model with
# latent_dim 16 and hidden_dim 32 on CartPole-v1 (observations [z, h] of 48 features, Discrete(2) actions).
PRINTS = {
    "Embed images with a pretrained encoder": r"features \(8, 64\)",
    "Open a world model's dream as a gymnasium env": r"dream \(4, 48\) \(4,\) Discrete\(2\)",
    "Step a trained controller on real observations": r"return \d+\.0",
    "Run a cycle from Python": r"cycle done 1 -?\d+(\.\d+)?",
}


def examples() -> dict[str, str]:
    """Each section's ```python block, by the section's title."""
    found = {}
    for section in re.split(r"^## ", PAGE.read_text(), flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0].strip()
        for code in re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL):
            assert title not in found, f"docs/api.md: one example per section ({title!r} has more)"
            found[title] = code
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with the page's two debug runs in runs/."""
    root = tmp_path_factory.mktemp("api")
    for command, name in (("pretrain", "debug-pretrain"), ("cycle", "debug-cycle")):
        result = wm(command, *DEBUG, "--run-dir", str(root / "runs" / name))
        assert result.returncode == 0, result.stderr
    return root


def test_every_section_has_its_example():
    assert sorted(examples()) == sorted(PRINTS)


@pytest.mark.parametrize("title", sorted(PRINTS))
def test_the_example_runs_and_prints_what_it_says(workdir, title):
    code = examples()[title]
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), ENV.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(re.fullmatch(PRINTS[title], line) for line in lines), (PRINTS[title], result.stdout)
