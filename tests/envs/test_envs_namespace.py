"""The toolkit's envs under the `wm` namespace, as gymnasium 1.x packages register theirs, and a user's own env by
`module:Id`, from a directory outside the clone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_gymnasium_makes_the_toolkit_s_env_by_namespace(tmp_path):
    # A fresh interpreter, no import of ours: gymnasium imports `envs`, which registers the namespace.
    result = python("import gymnasium as gym; print(gym.make('envs:wm/Parking-v0').spec.id)", tmp_path)
    assert result.returncode == 0 and result.stdout.split() == ["wm/Parking-v0"], result.stderr
    result = python("import gymnasium as gym, envs; print(gym.make('wm/Parking-v0').spec.id)", tmp_path)
    assert result.returncode == 0 and result.stdout.split() == ["wm/Parking-v0"], result.stderr
    # Before the import, the namespace is unknown to gymnasium: registration is what the import does.
    result = python("import gymnasium as gym; gym.make('wm/Parking-v0')", tmp_path)
    assert result.returncode != 0 and "wm" in result.stderr


def test_make_env_takes_module_ids_and_names_what_fails():
    from envs import make_env
    from envs.make import EnvUnavailableError

    sys.path.insert(0, str(HERE))
    try:
        env, spec = make_env("custom_env:ShortPole-v0", obs="pixels", size=32, seed=0)
    finally:
        sys.path.remove(str(HERE))
    assert spec.obs_shape == (32, 32, 3) and spec.max_episode_steps == 100
    env.close()
    with pytest.raises(EnvUnavailableError, match="its module 'no_such_module' cannot be imported"):
        make_env("no_such_module:ShortPole-v0")
    with pytest.raises(EnvUnavailableError, match="unknown env id 'ShortPol-v0' after importing 'custom_env'"):
        sys.path.insert(0, str(HERE))
        try:
            make_env("custom_env:ShortPol-v0")
        finally:
            sys.path.remove(str(HERE))


@pytest.mark.slow
def test_wm_cycle_on_a_user_s_env_from_outside_the_clone(tmp_path):
    """The README's main command with the debug preset by name, on an env the toolkit has never heard of."""
    command = [sys.executable, "-m", "experiments", "cycle", "--config", "debug", "--set", "run.threads=1", "--set",
               "env.id=custom_env:ShortPole-v0", "--runs", str(tmp_path / "runs"), "--name", "mine"]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["env"]["env_id"] == "custom_env:ShortPole-v0"


def test_reward_threshold_is_the_registered_one_or_none():
    from envs.make import EnvUnavailableError, reward_threshold

    assert reward_threshold("CartPole-v1") == 475.0 and reward_threshold("CarRacing-v3") == 900.0
    assert reward_threshold("Pendulum-v1") is None and reward_threshold("wm/Parking-v0") is None
    assert reward_threshold("wm/ParkingLot-v0") is None  # the Parking tasks are judged by their success rate
    with pytest.raises(EnvUnavailableError, match="unknown env id"):
        reward_threshold("CartPol-v1")
