"""The distributed helpers in one process (no torchrun): shares of rows, and every collective a no-op."""

import numpy as np
import pytest
import torch

from envs.collect import CollectStats
from experiments import distributed
from experiments.config import load_config
from experiments.evolution import weighted_figures


@pytest.mark.parametrize("count", [0, 1, 5, 6, 64, 65])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_shares_tile_the_rows_in_rank_order_and_differ_by_one_at_most(count, parts):
    shares = [distributed.share(count, parts, index) for index in range(parts)]
    assert [i for s in shares for i in range(count)[s]] == list(range(count))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_alone_every_helper_returns_what_one_process_has():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.share(7) == slice(0, 7) and distributed.even_share(7, "x") == slice(0, 7)
    assert distributed.rank_seed(11) == 11
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3] and distributed.gather_object(3) == [3]
    assert distributed.average_over_processes({"loss": torch.tensor(0.25)}) == {"loss": 0.25}
    assert distributed.agree_signal(None) is None and distributed.agree_signal(15) == 15
    model = torch.nn.Linear(2, 1)
    model.loss = lambda: None
    assert distributed.data_parallel(model, torch.device("cpu")) is model.loss  # no DDP alone
    distributed.barrier()
    distributed.check_config(load_config([], ["world_model.batch_size=5"]), "train")  # any batch splits over one


def test_collection_figures_of_the_shares_combine_into_one_collection():
    parts = [CollectStats(10, 2, (1.0, 2.0), (4, 5), 1, 1), CollectStats(0, 0), CollectStats(7, 1, (3.0,), (6,), 1, 0)]
    whole = CollectStats.combine(parts)
    assert whole == CollectStats(17, 3, (1.0, 2.0, 3.0), (4, 5, 6), 2, 1)


def test_figures_of_population_shares_average_weighted_by_candidates():
    figures = weighted_figures([{"length": 10.0}, {"length": 4.0}, {}], [3, 1, 0])
    np.testing.assert_allclose(figures["length"], (3 * 10 + 4) / 4)
