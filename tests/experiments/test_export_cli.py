"""`wm export --run` on a real debug `wm cycle` run, in a subprocess: the ONNX graph run by onnxruntime chooses
PyTorch's env action on 200 recorded real steps, the .pt2 loads with torch.export.load and gives PyTorch's action
vector, and what cannot be exported is refused in one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from run_wm import DEBUG, wm

pytestmark = pytest.mark.slow  # starts `wm` subprocesses


@pytest.fixture(scope="module")
def cycle_run(tmp_path_factory) -> Path:
    """A debug `wm cycle` run: its best.pt carries the world model of its iteration."""
    run = tmp_path_factory.mktemp("runs") / "cycle"
    result = wm("cycle", *DEBUG, "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def exported(cycle_run) -> tuple[Path, dict]:
    result = wm("export", "--run", str(cycle_run), "--steps", "200", "--set", "run.threads=1", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "chose PyTorch's env action on all 200 real steps" in result.stderr
    return cycle_run / "export", json.loads((cycle_run / "export" / "export.json").read_text())


def test_onnxruntime_and_the_program_choose_pytorch_s_env_actions_on_200_real_steps(exported):
    out, report = exported
    assert report["steps_checked"] == 200 and report["episodes"] >= 2  # the state restarts at each episode's start
    assert report["agreement"] is True
    assert report["env_actions_agree"] == {"onnxruntime": True, "torch.export": True}
    assert report["max_abs_difference"]["onnxruntime"] == 0.0  # one-hot vectors: equal, or 1 apart
    # h and z are carried over 200 steps: after a float32 debug cycle the rounding stayed near 1e-4; after a bf16 one
    # (`pytest --precision bf16`) it reached 0.12, the env actions still all alike (cause not yet looked into).
    bf16 = json.loads((out.parent / "summary.json").read_text())["precision"] == "bf16"
    assert report["max_abs_state_difference"]["onnxruntime"] < (0.5 if bf16 else 1e-2)
    assert report["inputs"] == ["observation", "hidden", "latent", "action", "is_first"]
    import onnxruntime

    assert report["onnxruntime"] == onnxruntime.__version__
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "policy.onnx", "policy.pt2"]  # no temp files
    from envs.atomic import sha256_file

    for name, facts in report["files"].items():
        assert facts["path"] == name and facts["sha256"] == sha256_file(out / name)


def test_the_program_loads_with_torch_export_and_gives_pytorch_s_action_vector(cycle_run, exported):
    from agents.policy import PolicyStep
    from envs import make_env
    from experiments.load import load_player

    out, _ = exported
    player = load_player(cycle_run)
    step = PolicyStep(player.model, player.controller, player.parameters)
    cfg = player.cfg.env
    env, _ = make_env(cfg.id, obs=cfg.obs, size=cfg.size, action_repeat=cfg.action_repeat)
    obs, _ = env.reset(seed=11)
    env.close()
    assert obs.dtype == np.uint8
    inputs = (torch.as_tensor(np.array(obs))[None], *step.initial_state(1), torch.ones(1, dtype=torch.bool))
    program = torch.export.load(out / "policy.pt2").module()
    with torch.no_grad():
        expected, actual = step(*inputs), program(*inputs)
    for ours, theirs in zip(expected, actual, strict=True):
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert expected[0].sum() == 1  # a one-hot action vector


def test_a_run_without_a_controller_is_refused_in_one_line(cycle_run, tmp_path):
    run = tmp_path / "no-controller"
    shutil.copytree(cycle_run, run, ignore=shutil.ignore_patterns("export", "videos", "tb"))
    (run / "checkpoints" / "best.pt").unlink()
    result = wm("export", "--run", str(run))
    assert result.returncode == 2
    assert "no controller yet (no checkpoints/best.pt) to export" in result.stderr
    assert "Traceback" not in result.stderr and not (run / "export").exists()


def test_missing_export_packages_name_the_extra(monkeypatch, capsys, tmp_path):
    import importlib.util

    from experiments import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert cli.main(["export", "--run", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "wm export: error: ONNX export needs onnxruntime: pip install 'worldmodel-toolkit[export]'"
