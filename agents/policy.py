"""A run's policy as one module: encoder, filter and controller in a single graph, to export and run elsewhere.

`PolicyStep` is one `LatentAgent` step without exploration, written as a function of its inputs so that it traces:

    observation (N, *obs_shape)   uint8 pixels (N, H, W, C) as the env gives them, or float32 states (N, S)
    hidden (N, hidden_dim), latent (N, D), action (N, A)   float32: the state the previous step returned
    is_first (N,) bool            True where the observation starts an episode (the state is then restarted)
        ->
    action (N, A), hidden (N, hidden_dim), latent (N, D)   the action vector and the state for the next step

Everything `WorldModel.encode` does happens inside: uint8 -> [0, 1], resizing to the ViT's input, the input blur,
ImageNet normalisation, pooling and the feature standardisation (or symlog for states). The env action follows from
the action vector: for a discrete space its argmax (plus the space's `start`), for a continuous one the vector
itself, already within the bounds (`Controller.env_actions`; `PolicyStep.env_actions`).

`export_onnx` makes it an ONNX graph (`torch.onnx.export(..., dynamo=True)`, batch N dynamic) that
`OnnxPolicy` runs with onnxruntime; `export_program` makes a `torch.export` program (.pt2) that
`torch.export.load(path).module()` runs in PyTorch without this package. Both need the export extra
(`pip install 'worldmodel-toolkit[export]'`: onnx, onnxruntime, onnxscript); the program alone needs only torch.

Both return the file's bytes; the caller writes them (`wm export` atomically, with envs/atomic.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import NamedTuple

import gymnasium
import numpy as np
import torch

from agents.agent import LatentAgent, decide
from agents.controllers import Controller
from worldmodel.dynamics.world_model import WorldModel

EXPORT_EXTRA = "pip install 'worldmodel-toolkit[export]'"
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INPUT_NAMES = ("observation", "hidden", "latent", "action", "is_first")
OUTPUT_NAMES = ("next_action", "next_hidden", "next_latent")
ONNX_OPSET = 18
"""The opset of the exported graph: the one torch.onnx's operator library is written in (its default, 20, is converted
up from it), read by more runtimes (onnxruntime since 1.14)."""
CONTINUOUS_TOLERANCE = 1e-4
"""Largest difference between two continuous env actions that still agree (float32 sums in another order differ by
about 1e-7 of the value; a different action would differ by far more)."""


class PolicyState(NamedTuple):
    """What a policy carries from one step to the next, for N envs at once."""

    hidden: torch.Tensor
    """(N, hidden_dim) the world model's history h."""
    latent: torch.Tensor
    """(N, D) the latent z of the last observation."""
    action: torch.Tensor
    """(N, A) the action vector chosen on it."""


class PolicyStep(torch.nn.Module):
    """One decision of a controller acting through a world model, `LatentAgent` without exploration (see the
    module's docstring for the inputs and outputs).

    Args:
        model: the world model the controller was evolved in (its weights are frozen and it is put in eval mode).
        controller: the controller's shape.
        parameters: (n,) the controller's parameters.
    """

    def __init__(self, model: WorldModel, controller: Controller, parameters: np.ndarray | torch.Tensor):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.controller = controller
        weight = model.gru.weight_hh
        values = torch.as_tensor(np.asarray(parameters), device=weight.device, dtype=weight.dtype)
        if values.shape != (controller.num_params,):
            raise ValueError(f"controller parameters must have shape ({controller.num_params},), got {values.shape}")
        self.register_buffer("controller_parameters", values[None])  # (1, n)
        self.eval()

    def forward(
        self,
        obs: torch.Tensor,
        hidden: torch.Tensor,
        latent: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (N, *obs_shape), hidden (N, hidden_dim), latent (N, D), action (N, A), is_first (N,) bool -> the action
        vector (N, A) and the next hidden (N, hidden_dim) and latent (N, D)."""
        parameters = self.controller_parameters.expand(obs.shape[0], -1)  # (1, n) -> (N, n)
        return decide(self.model, self.controller, parameters, hidden, latent, action, is_first[:, None], obs)

    def initial_state(self, n: int) -> PolicyState:
        """The state before an episode's first step (zeros; the first step restarts it anyway), for N envs."""
        weight = self.model.gru.weight_hh
        zeros = lambda width: torch.zeros(n, width, device=weight.device, dtype=weight.dtype)  # noqa: E731
        return PolicyState(self.model.initial_state(n), zeros(self.model.latent_dim), zeros(self.model.action_dim))

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        """Action vectors (N, A) -> what the env takes: (N,) ints (argmax + start) or (N, A) float32."""
        return self.controller.env_actions(action)


def example_inputs(step: PolicyStep, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs of a first step on observations (N, *obs_shape), at least 2 rows (the first repeated): traced with
    one row, torch.export would fix the batch at 1."""
    obs = torch.as_tensor(np.asarray(obs))
    if obs.shape[0] < 2:
        obs = obs[:1].expand(2, *obs.shape[1:]).contiguous()  # (1, ...) -> (2, ...)
    state = step.initial_state(obs.shape[0])
    return (obs, *state, torch.ones(obs.shape[0], dtype=torch.bool))


def dynamic_shapes() -> dict[str, dict[int, torch.export.Dim]]:
    """The batch dimension N of every input, shared, as `torch.export` takes it (keyed by `forward`'s names)."""
    batch = torch.export.Dim("batch")
    return {name: {0: batch} for name in ("obs", "hidden", "latent", "action", "is_first")}


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence what torch's exporters say about themselves, not about the model: that every input shares the one batch
    dimension, that torchvision's operators are not registered, and a deprecation inside torch.export.save."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_program(step: PolicyStep, example_obs: np.ndarray | torch.Tensor) -> bytes:
    """`torch.export` the step (batch dynamic): the bytes of a .pt2 file.

    Load it with `torch.export.load(path).module()`, called as `PolicyStep` is.
    """
    buffer = io.BytesIO()
    with torch.no_grad(), quiet_export():
        program = torch.export.export(step, example_inputs(step, example_obs), dynamic_shapes=dynamic_shapes())
        torch.export.save(program, buffer)
    return buffer.getvalue()


def require_export_packages() -> None:
    """Raise ModuleNotFoundError naming the extra when onnx, onnxruntime or onnxscript is missing."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"ONNX export needs {', '.join(missing)}: {EXPORT_EXTRA}")


def export_onnx(step: PolicyStep, example_obs: np.ndarray | torch.Tensor) -> bytes:
    """Export the step as one ONNX graph (inputs `INPUT_NAMES`, outputs `OUTPUT_NAMES`, batch dynamic), weights inside:
    the bytes of a .onnx file."""
    require_export_packages()
    with torch.no_grad(), quiet_export():
        program = torch.onnx.export(
            step,
            example_inputs(step, example_obs),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes(),
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


class OnnxPolicy:
    """An exported policy run by onnxruntime for N envs, carrying its own state from call to call (as
    `LatentAgent` does): `reset(is_first)` marks the envs whose next observation starts an episode.

    Args:
        path: an ONNX file of `export_onnx`'s bytes.
        num_envs: N.
        threads: onnxruntime's intra-op threads (default: its own choice).
    """

    def __init__(self, path: str | os.PathLike, num_envs: int = 1, threads: int | None = None):
        require_export_packages()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = {node.name: node for node in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise ValueError(f"{path} is no exported policy: its inputs are {sorted(inputs)}, not {INPUT_NAMES}")
        self.obs_dtype = np.uint8 if inputs["observation"].type == "tensor(uint8)" else np.float32
        hidden_dim, latent_dim, action_dim = (int(inputs[name].shape[1]) for name in ("hidden", "latent", "action"))
        self.num_envs = num_envs
        zeros = lambda width: np.zeros((num_envs, width), np.float32)  # noqa: E731
        self.state = PolicyState(zeros(hidden_dim), zeros(latent_dim), zeros(action_dim))  # numpy arrays here
        self.first = np.ones(num_envs, dtype=bool)

    def reset(self, is_first: np.ndarray) -> None:
        """Mark the envs (N,) bool whose next observation is the first of an episode."""
        self.first = np.asarray(is_first, dtype=bool).copy()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, *obs_shape) -> action vectors (N, A) float32; the state moves on."""
        feed = {"observation": np.asarray(obs, dtype=self.obs_dtype), **self.state._asdict(), "is_first": self.first}
        action, hidden, latent = self.session.run(list(OUTPUT_NAMES), feed)
        self.state = PolicyState(hidden, latent, action)
        self.first = np.zeros(self.num_envs, dtype=bool)
        return action


class StatefulStep:
    """A `PolicyStep`-like module (a PolicyStep, or `torch.export.load(path).module()`) for N envs, carrying its own
    state from call to call as `OnnxPolicy` does."""

    def __init__(self, step: Callable[..., tuple[torch.Tensor, ...]], initial: PolicyState):
        self.step, self.state = step, initial
        self.first = torch.ones(initial.hidden.shape[0], dtype=torch.bool)

    def reset(self, is_first: np.ndarray) -> None:
        """Mark the envs (N,) bool whose next observation is the first of an episode."""
        self.first = torch.as_tensor(np.asarray(is_first, dtype=bool).copy())

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, *obs_shape) -> action vectors (N, A) float32; the state moves on."""
        action, hidden, latent = self.step(torch.as_tensor(np.asarray(obs)), *self.state, self.first)
        self.state = PolicyState(hidden, latent, action)
        self.first = torch.zeros_like(self.first)
        return action.float().cpu().numpy()


class Recorded(NamedTuple):
    """Steps of one env as a policy played them, across episodes, and the state it carried."""

    obs: np.ndarray
    """(T, *obs_shape) the observations, as the env gave them."""
    is_first: np.ndarray
    """(T,) bool, True where an observation starts an episode."""
    actions: np.ndarray
    """(T, A) float32, the action vector chosen on each."""
    hidden: np.ndarray
    """(T, hidden_dim) float32, h after each step."""
    latent: np.ndarray
    """(T, D) float32, z after each step."""


def record_steps(
    agent: LatentAgent, env: gymnasium.Env, steps: int, seed: int, on_step: Callable[[int], None] | None = None
) -> Recorded:
    """`steps` steps of a one-env agent (its exploration set to 0) in `env`, reset with `seed` and again, unseeded,
    whenever an episode ends; `on_step(1)` after each."""
    if agent.num_envs != 1 or steps < 1:
        raise ValueError(f"record_steps plays one env for at least one step, got {agent.num_envs} envs, {steps} steps")
    agent.exploration = 0.0
    obs, _ = env.reset(seed=seed)
    first = True
    fields: dict[str, list] = {name: [] for name in Recorded._fields}
    for _ in range(steps):
        obs = np.array(obs)  # the env's own array may be read-only, or reused by its next step
        agent.reset(np.array([first]))
        action = agent(obs[None])[0]
        state = (agent.action[0], agent.hidden[0], agent.latent[0])
        for name, value in zip(Recorded._fields, (obs, first, *state), strict=True):
            fields[name].append(value.float().cpu().numpy() if isinstance(value, torch.Tensor) else value)
        obs, _, terminated, truncated, _ = env.step(action)
        first = bool(terminated or truncated)
        if first:
            obs, _ = env.reset()
        if on_step is not None:
            on_step(1)
    return Recorded(*(np.stack(values) for values in fields.values()))


def replay(policy: OnnxPolicy | StatefulStep, recorded: Recorded) -> Recorded:
    """Each recorded observation through a one-env `policy` carrying its own state, restarted where an episode
    started: the same steps with the action vectors it chose and the state it carried."""
    actions, hidden, latent = [], [], []
    for obs, first in zip(recorded.obs, recorded.is_first, strict=True):
        policy.reset(np.array([first]))
        actions.append(policy(obs[None])[0])  # (1, *obs_shape) -> (A,)
        hidden.append(policy.state.hidden[0])
        latent.append(policy.state.latent[0])
    as_array = lambda values: np.stack([np.asarray(v, dtype=np.float32) for v in values])  # noqa: E731
    return recorded._replace(actions=as_array(actions), hidden=as_array(hidden), latent=as_array(latent))


def actions_agree(controller: Controller, expected: np.ndarray, actual: np.ndarray) -> bool:
    """Whether two sequences of action vectors (T, A) give the same env actions: the same argmax for a discrete space,
    within CONTINUOUS_TOLERANCE for a continuous one."""
    ours, theirs = (controller.env_actions(torch.as_tensor(np.ascontiguousarray(a))) for a in (expected, actual))
    if controller.discrete:
        return bool(np.array_equal(ours, theirs))
    return bool(np.abs(ours - theirs).max(initial=0.0) <= CONTINUOUS_TOLERANCE)
