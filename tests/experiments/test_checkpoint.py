import warnings

import pytest
import torch

from experiments.checkpoint import (
    CheckpointError,
    _save_steps,
    _serialise,
    load_latest,
    read_checkpoint,
    save_checkpoint,
)


def state(value: float) -> dict:
    return {"step": int(value), "model": {"w": torch.full((3,), value)}, "rng": [1, [2, 3], None]}


def test_round_trip_keeps_values_and_rotates_previous(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", state(1))
    save_checkpoint(tmp_path / "latest.pt", state(2))
    assert read_checkpoint(tmp_path / "latest.pt")["model"]["w"].tolist() == [2, 2, 2]
    assert read_checkpoint(tmp_path / "previous.pt")["step"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_a_kill_between_any_two_file_operations_of_a_save_leaves_a_valid_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", state(1))
    save_checkpoint(tmp_path / "latest.pt", state(2))
    resumable = []
    for _ in _save_steps(tmp_path / "latest.pt", _serialise(state(3)), keep_previous=True):
        # a SIGKILL here stops the save: whatever the files hold now is what a resume finds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # falling back to previous.pt is allowed
            resumable.append(load_latest(tmp_path)[0]["step"])
    assert resumable == [2, 2, 2, 2, 3]  # the old checkpoint until the new one is whole
    assert read_checkpoint(tmp_path / "previous.pt")["step"] == 2


def test_a_damaged_latest_is_not_kept_over_a_valid_previous(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", state(1))
    save_checkpoint(tmp_path / "latest.pt", state(2))
    steps = _save_steps(tmp_path / "latest.pt", _serialise(state(3)), keep_previous=True)
    for _ in range(4):  # killed after writing step 3's file, before its sidecar
        next(steps)
    with pytest.warns(RuntimeWarning, match="damaged"):
        assert load_latest(tmp_path)[0]["step"] == 2  # the resume
    save_checkpoint(tmp_path / "latest.pt", state(4))
    assert read_checkpoint(tmp_path / "latest.pt")["step"] == 4
    assert read_checkpoint(tmp_path / "previous.pt")["step"] == 2  # not the damaged step 3


def test_flipped_byte_is_detected_and_previous_used_with_warning(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", state(1))
    save_checkpoint(tmp_path / "latest.pt", state(2))
    data = bytearray((tmp_path / "latest.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "latest.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(tmp_path / "latest.pt")
    with pytest.warns(RuntimeWarning, match="damaged.*previous.pt"):
        loaded, path = load_latest(tmp_path)
    assert path.name == "previous.pt" and loaded["step"] == 1


def test_no_valid_checkpoint_raises_with_every_reason(tmp_path):
    with pytest.raises(CheckpointError, match="no valid checkpoint") as info:
        load_latest(tmp_path)
    assert "latest.pt does not exist" in str(info.value)
    save_checkpoint(tmp_path / "latest.pt", state(1))
    (tmp_path / "latest.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum"):
        load_latest(tmp_path)


class Arbitrary:
    pass


def test_arbitrary_objects_are_refused_by_the_safe_loader(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", {"payload": Arbitrary()})
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(tmp_path / "latest.pt")


def test_foreign_file_is_refused(tmp_path):
    from envs.atomic import atomic_write_text, sha256_file

    torch.save({"weights": torch.zeros(2)}, tmp_path / "latest.pt")
    atomic_write_text(tmp_path / "latest.pt.sha256", sha256_file(tmp_path / "latest.pt"))
    with pytest.raises(CheckpointError, match="not a format-1 checkpoint"):
        read_checkpoint(tmp_path / "latest.pt")
