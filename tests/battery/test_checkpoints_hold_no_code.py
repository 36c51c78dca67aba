"""No file a user is handed may run code when loaded: every checkpoint that `wm pretrain`, `wm train`, `wm evolve`
and `wm cycle` write names, in its pickle, only torch's tensor rebuilders and storages. (The CMA-ES state was a
pickle inside the checkpoint, and a tampered one ran a shell command on `wm evolve --resume`.)"""

import pytest
from battery_helpers import DEBUG, wm

from experiments.checkpoint import pickled_globals

pytestmark = pytest.mark.slow

ALLOWED = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "collections.OrderedDict")


def allowed(name: str) -> bool:
    return name in ALLOWED or (name.startswith("torch.") and name.endswith("Storage"))


def test_every_command_s_checkpoints_name_only_torch_storage(tmp_path):
    short = ["--set", "world_model.steps=6", "--set", "world_model.decoder_steps=2", "--set", "evolve.generations=2"]
    runs = {
        "pretrain": wm("pretrain", *DEBUG, "--run-dir", str(tmp_path / "pretrain")),
        "train": wm("train", *DEBUG, *short, "--run-dir", str(tmp_path / "train")),
        "cycle": wm("cycle", *DEBUG, *short, "--set", "cycle.iterations=2", "--run-dir", str(tmp_path / "cycle")),
    }
    runs["evolve"] = wm(
        "evolve", *DEBUG, *short, "--world-model", str(tmp_path / "train"), "--run-dir", str(tmp_path / "evolve")
    )
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr[-2000:])
    checkpoints = sorted(tmp_path.glob("*/checkpoints/*.pt"))
    assert {path.parts[-3] for path in checkpoints} == set(runs)
    assert any(path.name == "best.pt" for path in checkpoints)  # a chosen controller, with its world model
    for path in checkpoints:
        names = pickled_globals(path)
        assert names and all(allowed(n) for n in names), (path, sorted(n for n in names if not allowed(n)))
