"""CMA-ES that maximises fitness: a thin, checkpointable wrapper around pycma (https://github.com/CMA-ES/pycma).

Letters: P candidates per generation (the population size), n parameters (the dimension).

Three things pycma leaves to its caller are done here:

* **Its own random generator.** By default pycma draws its samples from numpy's global RNG (and, once restored,
  from a private copy of it), so a search resumed from a checkpoint would diverge from the uninterrupted one as
  soon as anything else touched the global RNG. Here pycma draws from a `np.random.Generator` seeded from `seed`
  (the `randn` option), whose state is saved with the search, and `seed=nan` tells pycma to leave the global RNG
  alone.
* **Non-finite fitness.** pycma replaces NaN by the median of the other values, still updates the distribution
  when *all* values are NaN, and only warns on inf. A diverging rollout is a bad candidate, not an average one:
  here a non-finite value ranks below every finite one, and a generation with too many of them raises
  `NonFiniteFitnessError` before the distribution is touched.
* **Maximisation.** pycma minimises; `tell` passes it `-fitness`.

pycma's stopping criteria (`es.stop()`) are never consulted: a caller runs as many generations as it wants.
The state holds no pickle: the search is saved as numbers and rebuilt from them (`agents.cma_state`), so loading a
checkpoint cannot run code.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from agents import cma_state

with warnings.catch_warnings():
    # pycma warns at import when matplotlib is missing; it is only needed for its plots, which are never used.
    warnings.filterwarnings("ignore", message=".*matplotlib.*", category=UserWarning)
    import cma

STATE_KEYS: tuple[str, ...] = (
    "search",
    "randn",
    "x0",
    "sigma0",
    "best",
    "best_fitness",
    "generation",
    "popsize",
    "dimension",
    "diagonal",
    "max_nonfinite_fraction",
)


class NonFiniteFitnessError(RuntimeError):
    """Too many candidates of one generation had non-finite fitness; the search was not updated."""


class Generation(NamedTuple):
    """What one generation of `CMAES.step` (or `CMAES.tell`) did."""

    generation: int
    """Index of the generation just told (0-based)."""
    best_fitness: float
    """Best finite fitness this generation."""
    mean_fitness: float
    """Mean of the finite fitness values this generation."""
    nonfinite: int
    """How many candidates had non-finite fitness (ranked below the worst finite one)."""
    ask_tell_s: float
    """Wall seconds spent in ask + tell (pycma's own work)."""
    score_s: float
    """Wall seconds spent in `score`."""


class StandardNormal:
    """pycma's `randn` option: `randn(lam, n) -> (lam, n)` standard normal samples from a private generator."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def __call__(self, lam: int, dimension: int) -> np.ndarray:
        return self.generator.standard_normal((lam, dimension))  # (lam, n)


class CMAES:
    """A CMA-ES that maximises fitness (Hansen, "The CMA Evolution Strategy: A Tutorial", https://arxiv.org/abs/1604.00772).

    Use `step(score)` for one generation, or `ask` / `tell` for finer control. `state_dict` / `from_state_dict`
    continue the identical search.

    Args:
        x0: (n,) start point; a warm start is an earlier controller's parameters.
        sigma: initial step size, in the units of x0.
        popsize: P, candidates per generation (>= 2).
        seed: seeds the search's own random generator (numpy's global RNG is never used).
        diagonal: separable CMA-ES (a diagonal covariance; pycma option `CMA_diagonal=True`), which costs O(n)
            instead of O(n^2) memory and O(n^3) eigendecompositions; for large n (a few thousand parameters).
        max_nonfinite_fraction: a generation with more than this fraction of non-finite fitness values (or with
            no finite value at all) raises `NonFiniteFitnessError` and leaves the distribution unchanged.
    """

    def __init__(
        self,
        x0: np.ndarray,
        sigma: float,
        popsize: int,
        seed: int,
        *,
        diagonal: bool = False,
        max_nonfinite_fraction: float = 0.5,
    ) -> None:
        x0 = _check_x0(x0)
        _check_sigma(sigma)
        _check_popsize(popsize)
        _check_seed(seed)
        _check_max_nonfinite_fraction(max_nonfinite_fraction)
        self._x0, self._sigma0 = x0.copy(), float(sigma)
        options = {
            "popsize": int(popsize),
            "randn": StandardNormal(int(seed)),
            "seed": np.nan,  # nan: pycma does nothing to numpy's global RNG (any other value would seed it)
            "CMA_diagonal": bool(diagonal),
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,  # no output files
            "verb_time": False,
            "signals_filename": "",  # '' (not None, which falls back to the default): never read cma_signals.in
        }
        self._es = cma.CMAEvolutionStrategy(x0, float(sigma), options)
        self.popsize = int(popsize)
        self.dimension = int(self._es.N)
        self.diagonal = bool(diagonal)
        self.max_nonfinite_fraction = float(max_nonfinite_fraction)
        self.generation = 0
        self.best: np.ndarray | None = None
        self.best_fitness = -math.inf
        self._asked: np.ndarray | None = None  # (P, n), the candidates of the generation not yet told

    @property
    def mean(self) -> np.ndarray:
        """(n,) the mean of the search distribution (a copy)."""
        return np.array(self._es.mean, dtype=np.float64)

    @property
    def start(self) -> np.ndarray:
        """(n,) the point the search started from, x0 (a copy; a warm start is an earlier controller)."""
        return np.array(self._es.x0, dtype=np.float64)

    @property
    def sigma(self) -> float:
        """The current overall step size."""
        return float(self._es.sigma)

    def ask(self) -> np.ndarray:
        """Sample a generation.

        Returns:
            (P, n) float64 candidates. Asking again before `tell` discards the earlier, untold ones.
        """
        candidates = np.array(self._es.ask(), dtype=np.float64)  # list of P (n,) -> (P, n)
        self._asked = candidates.copy()
        return candidates

    def tell(self, candidates: np.ndarray, fitness: np.ndarray) -> tuple[int, float, float]:
        """Update the distribution with the fitness of the candidates of the last `ask` (higher is better).

        Non-finite values (nan, +-inf) rank below every finite one. When more than `max_nonfinite_fraction * P`
        (or all) are non-finite, raises `NonFiniteFitnessError` without updating the search; that generation is
        then discarded (`ask` again).

        Args:
            candidates: (P, n) as returned by the last `ask`.
            fitness: (P,) fitness of each candidate.

        Returns:
            (number of non-finite values, best finite fitness, mean finite fitness) of this generation.
        """
        if self._asked is None:
            raise RuntimeError("tell() without a pending ask(): call ask() first (each generation is told once)")
        candidates = np.array(candidates, dtype=np.float64)  # a copy: pycma must not alias the caller's array
        fitness = np.asarray(fitness, dtype=np.float64)
        if candidates.shape != self._asked.shape:
            raise ValueError(
                f"candidates have shape {candidates.shape}, expected {self._asked.shape} as returned by the last ask()"
            )
        if fitness.shape != (self.popsize,):
            raise ValueError(f"fitness has shape {fitness.shape}, expected ({self.popsize},): one value per candidate")
        finite = np.isfinite(fitness)  # (P,)
        nonfinite = int(self.popsize - finite.sum())
        if nonfinite == self.popsize or nonfinite > self.max_nonfinite_fraction * self.popsize:
            self._asked = None
            raise NonFiniteFitnessError(
                f"{nonfinite} of {self.popsize} fitness values are non-finite in generation {self.generation} "
                f"(at most {self.max_nonfinite_fraction} * {self.popsize} allowed); the search was not updated"
            )
        finite_fitness = fitness[finite]
        worst = float(finite_fitness.min())
        # Strictly worse than every finite value, and finite itself (never hand pycma a nan or inf).
        replacement = worst - max(1.0, abs(worst))
        if not math.isfinite(replacement):
            replacement = -float(np.finfo(np.float64).max)
        ranked = np.where(finite, fitness, replacement)  # (P,)
        self._es.tell(list(candidates), list(-ranked))  # pycma minimises
        self._asked = None

        index = int(np.argmax(ranked))  # a finite one: at least one is finite and all replacements are below it
        best, mean = float(ranked[index]), float(finite_fitness.mean())
        if best > self.best_fitness:
            self.best, self.best_fitness = candidates[index].copy(), best
        self.generation += 1
        return nonfinite, best, mean

    def step(self, score: Callable[[np.ndarray], np.ndarray]) -> Generation:
        """Run one generation: ask, score the whole population at once, tell.

        Args:
            score: maps (P, n) candidates to (P,) fitness, higher is better.

        Returns:
            The `Generation` just told.
        """
        start = time.perf_counter()
        candidates = self.ask()  # (P, n)
        asked = time.perf_counter()
        fitness = score(candidates)  # (P,)
        scored = time.perf_counter()
        nonfinite, best, mean = self.tell(candidates, fitness)
        told = time.perf_counter()
        return Generation(
            generation=self.generation - 1,
            best_fitness=best,
            mean_fitness=mean,
            nonfinite=nonfinite,
            ask_tell_s=(asked - start) + (told - scored),
            score_s=scored - asked,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the identical search; survives `torch.save` + `torch.load(weights_only=True)`.

        The pycma object as plain data (`agents.cma_state`) and its generator's state as numbers. Must be called between
        generations, not between `ask` and `tell`.
        """
        if self._asked is not None:
            raise RuntimeError(
                "state_dict() between ask() and tell(): the asked candidates are not part of the state, so a "
                "resumed search would differ; save between generations"
            )
        return {
            "search": cma_state.to_data(self._es),
            "randn": self._es.opts["randn"].generator.bit_generator.state,
            "x0": torch.from_numpy(self._x0.copy()),
            "sigma0": self._sigma0,
            "best": None if self.best is None else torch.from_numpy(self.best.copy()),
            "best_fitness": float(self.best_fitness),
            "generation": int(self.generation),
            "popsize": int(self.popsize),
            "dimension": int(self.dimension),
            "diagonal": bool(self.diagonal),
            "max_nonfinite_fraction": float(self.max_nonfinite_fraction),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CMAES:
        """Rebuild the search saved by `state_dict`: a fresh search from the saved settings, the saved numbers
        copied into it. Raises ValueError naming what does not fit."""
        if "pycma" in state:
            raise ValueError(
                "CMA-ES state is pycma's pickle (a checkpoint from before the search was saved as numbers), which is "
                "refused: loading a pickle can run code. Start the search again"
            )
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"CMA-ES state is missing keys {missing}; expected {list(STATE_KEYS)}")
        popsize, dimension = int(state["popsize"]), int(state["dimension"])
        x0 = state["x0"]
        if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != (dimension,):
            raise ValueError(f"CMA-ES state 'x0' must be a tensor of shape ({dimension},)")
        self = cls(
            x0.detach().cpu().numpy(),
            float(state["sigma0"]),
            popsize,
            seed=0,  # the generator's state is restored below
            diagonal=bool(state["diagonal"]),
            max_nonfinite_fraction=float(state["max_nonfinite_fraction"]),
        )
        try:
            cma_state.restore(self._es, state["search"])
            self._es.opts["randn"].generator.bit_generator.state = state["randn"]
        except (TypeError, ValueError, KeyError) as error:  # CMAStateError is a ValueError
            raise ValueError(
                f"CMA-ES state does not fit a search of popsize={popsize}, n={dimension}: {error}"
            ) from error
        if self._es.popsize != popsize or self._es.N != dimension or np.shape(self._es.mean) != (dimension,):
            raise ValueError(f"CMA-ES state 'search' does not match popsize={popsize}, dimension={dimension}")
        best = state["best"]
        if best is not None and tuple(best.shape) != (dimension,):
            raise ValueError(f"CMA-ES state 'best' has shape {tuple(best.shape)}, expected ({dimension},)")
        self.generation = int(state["generation"])
        self.best = None if best is None else best.detach().cpu().numpy().astype(np.float64)
        self.best_fitness = float(state["best_fitness"])
        return self


def _check_x0(x0: np.ndarray) -> np.ndarray:
    """x0 as a (n,) float64 array, or ValueError."""
    try:
        array = np.array(x0, dtype=np.float64)  # a copy: pycma must not alias the caller's array
    except (TypeError, ValueError) as error:
        raise ValueError(f"x0 must be a 1-D array of finite numbers, got {x0!r}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"x0 must be a non-empty 1-D array (n,), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"x0 must be all finite, got {int((~np.isfinite(array)).sum())} non-finite entries")
    return array


def _check_sigma(sigma: float) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _check_popsize(popsize: int) -> None:
    if isinstance(popsize, bool) or not isinstance(popsize, (int, np.integer)) or popsize < 2:
        raise ValueError(f"popsize must be an integer >= 2, got {popsize!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _check_max_nonfinite_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)):
        raise ValueError(f"max_nonfinite_fraction must be a number in [0, 1), got {fraction!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"max_nonfinite_fraction must be a number in [0, 1), got {fraction!r}")
