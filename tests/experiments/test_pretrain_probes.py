"""The probes `wm pretrain` runs on frozen features (`experiments.pretraining.run_probes`), on known features."""

import torch

from experiments import config as config_lib
from experiments.pretraining import ProbeSet, build_dataset, build_probe_set, run_probes


def probe_set(labels: torch.Tensor) -> ProbeSet:
    """Every image labelled, half of them (seeded) fitting the probes, half scoring them."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    return ProbeSet(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), labels, None, order[: n // 2], order[n // 2 :])


def test_the_centred_knn_reads_classes_that_differ_along_the_shared_direction_where_the_cosine_cannot():
    pcfg = config_lib.load_config([]).pretrain
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    ray = torch.nn.functional.normalize(torch.randn(16, generator=generator), dim=0)
    # Two classes on one ray from the origin, at lengths 1 and 3: the same direction, so cosine similarity cannot
    # tell them apart; around their mean they point opposite ways.
    features = (1.0 + 2.0 * labels[:, None]) * ray + 0.05 * torch.randn(400, 16, generator=generator)
    scores = run_probes(features, probe_set(labels), pcfg)

    assert scores["knn_top1_centred"] > 0.99
    assert scores["knn_top1"] < 0.75  # chance is 0.5
    # Centred on the fitting images' mean: a shift every feature shares changes nothing.
    assert run_probes(features + 5.0, probe_set(labels), pcfg)["knn_top1_centred"] == scores["knn_top1_centred"]


def test_env_frames_are_probed_on_episodes_the_probe_was_not_fitted_on():
    cfg = config_lib.load_config([], ["pretrain.data.source=env:CartPole-v1", "pretrain.data.num_images=400"]).pretrain
    dataset = build_dataset(cfg.data, 32, seed=0, show_progress=False)  # random-policy CartPole: ~20 episodes
    episodes = dataset.groups
    assert episodes.shape == (400,) and episodes[0] == 0 and bool((episodes.diff() >= 0).all())
    assert int(episodes[-1]) >= 5  # random play ends episodes within a few dozen steps
    probes = build_probe_set(dataset, cfg, seed=0)
    assert len(probes.train) + len(probes.test) == 400  # eval.max_images is above 400: every frame
    fitted, held = set(probes.groups[probes.train].tolist()), set(probes.groups[probes.test].tolist())
    assert held and fitted and not fitted & held  # no episode on both sides
    assert sorted(fitted | held) == list(range(int(episodes[-1]) + 1))
