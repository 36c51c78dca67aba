"""Equivalence: two real gloo processes compute what one process computes on the whole batch or population.

One process group of 2 spawned processes runs every case of `gloo_workers.every_case`; this process runs the same
cases alone (no process group), and the answers are compared. The cases are built so that a naive split would
differ: shares of the batch with different numbers of valid steps, SIGReg (a statistic of the whole batch), a
decoder batch whose shares are unequal or empty, a population that does not divide evenly.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_workers import POPULATION, alone, every_case, run_processes

pytestmark = pytest.mark.slow  # each test starts gloo worker processes

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> tuple[dict, list[dict]]:
    """(one process's answers, each of the two processes' answers)."""
    directory: Path = tmp_path_factory.mktemp("gloo")
    return alone(), run_processes(every_case, 2, directory)


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOLERANCE, msg=key)


@pytest.mark.parametrize("guard", ["ema", "sigreg"])
def test_ddp_losses_and_gradients_equal_one_process_on_the_whole_batch(answers, guard):
    one, shared = answers
    for rank in shared:
        assert rank[guard]["losses"].keys() == one[guard]["losses"].keys()
        np.testing.assert_allclose(
            list(rank[guard]["losses"].values()), list(one[guard]["losses"].values()), **TOLERANCE
        )
        assert_close(rank[guard]["grads"], one[guard]["grads"])
    if guard == "sigreg":
        assert "sigreg" in one[guard]["losses"]


def test_decoder_steps_on_unequal_and_empty_shares_equal_one_process(answers):
    one, shared = answers
    for rank in shared:
        np.testing.assert_allclose(rank["decoder"]["losses"], one["decoder"]["losses"], **TOLERANCE)
        assert_close(rank["decoder"]["params"], one["decoder"]["params"])


def test_an_es_generation_proposes_and_scores_exactly_the_candidates_of_one_process(answers):
    one, shared = answers
    assert one["es"]["candidates"].shape[0] == POPULATION  # 5 candidates on 2 processes: shares of 3 and 2
    for rank in shared:
        np.testing.assert_array_equal(rank["es"]["candidates"], one["es"]["candidates"])
        # A share's rollout batches fewer rows: its matmuls may round differently in the last bits.
        np.testing.assert_allclose(rank["es"]["fitness"], one["es"]["fitness"], rtol=1e-6)
        np.testing.assert_allclose(rank["es"]["mean"], one["es"]["mean"], rtol=1e-9)  # the same search after tell
        assert rank["es"]["figures"].keys() == one["es"]["figures"].keys()
        np.testing.assert_allclose(list(rank["es"]["figures"].values()), list(one["es"]["figures"].values()), rtol=1e-6)


def test_a_batch_that_does_not_split_evenly_is_refused_naming_it_and_the_world_size(answers):
    one, shared = answers
    assert one["refusal"] == ""
    for rank in shared:
        assert rank["refusal"].startswith("world_model.batch_size: 5 does not split evenly across the 2 processes")
        assert "use a multiple of 2" in rank["refusal"]
