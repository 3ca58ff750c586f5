from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import DataLoader, Dataset

from monai_breastlt.data import AdaptiveRatioSampler

LABELS = [0] * 20 + [1] * 6 + [2] * 3 + [1] * 10 + [2] * 8
SYN = [False] * 29 + [True] * 18


def _counts(sampler, idx):
    labels, syn = np.asarray(LABELS), np.asarray(SYN)
    return Counter((int(labels[i]), bool(syn[i])) for i in idx)


def test_plan_counts_and_ratios_exact():
    s = AdaptiveRatioSampler(LABELS, SYN, ratios=[0.5, 0.5, 0.25])
    assert s.targets == [20, 20, 20]
    assert s.plan() == {"real": [20, 10, 15], "synthetic": [0, 10, 5]}  # class 0 has no synthetic pool
    c = _counts(s, list(s))
    assert c == {(0, False): 20, (1, False): 10, (1, True): 10, (2, False): 15, (2, True): 5}
    assert s.effective_ratios() == [0.0, 0.5, 0.25]
    s.set_ratios(2.0)  # clipped to max_ratio
    assert s.plan()["synthetic"] == [0, 18, 18]


def test_real_drawn_without_replacement_before_repeating():
    s = AdaptiveRatioSampler(LABELS, SYN, ratios=0.0)
    idx = list(s)
    real1 = [i for i in idx if LABELS[i] == 1]
    assert len(real1) == 20 and set(Counter(real1).values()) <= {3, 4}  # 6 items, 20 draws: whole passes
    real0 = [i for i in idx if LABELS[i] == 0]
    assert sorted(real0) == list(range(20))


def test_same_seed_epoch_same_order_and_epochs_differ():
    a, b = AdaptiveRatioSampler(LABELS, SYN, seed=3), AdaptiveRatioSampler(LABELS, SYN, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) != [] and len(list(a)) == len(first)


def test_targets_options_and_errors():
    assert AdaptiveRatioSampler(LABELS, SYN, target="real").targets == [20, 6, 3]
    s = AdaptiveRatioSampler(LABELS, SYN, target="distribution", epoch_size=10, class_weights=[2, 1, 1])
    assert s.targets == [5, 3, 2] or s.targets == [5, 2, 3]
    assert AdaptiveRatioSampler(LABELS, SYN, target=[1, 2, 3]).targets == [1, 2, 3]
    # epoch_size rescales "balanced" / "real" to a fixed budget with the same class proportions
    assert AdaptiveRatioSampler(LABELS, SYN, target="balanced", epoch_size=9).targets == [3, 3, 3]
    assert AdaptiveRatioSampler(LABELS, SYN, target="real", epoch_size=29).targets == [20, 6, 3]
    assert sum(AdaptiveRatioSampler(LABELS, SYN, target="real", epoch_size=10).targets) == 10
    with pytest.raises(ValueError, match="positive epoch_size"):
        AdaptiveRatioSampler(LABELS, SYN, target="distribution")
    with pytest.raises(ValueError, match="ratios must be one value or 3 values"):
        AdaptiveRatioSampler(LABELS, SYN).set_ratios([0.1, 0.2])
    with pytest.raises(ValueError, match="must be finite"):
        AdaptiveRatioSampler(LABELS, SYN).set_ratios([0.1, float("nan"), 0])
    with pytest.raises(ValueError, match="class 3 has a target of 4 samples but no real or synthetic item"):
        AdaptiveRatioSampler(LABELS, SYN, num_classes=4, target=[1, 1, 1, 4])


def test_class_with_only_synthetic_uses_synthetic():
    s = AdaptiveRatioSampler([0, 0, 0, 1, 1], [False, False, False, True, True], ratios=0.0)
    assert s.plan() == {"real": [3, 0], "synthetic": [0, 3]}


def test_drop_in_monai_dataloader_and_state():
    items = [{"label": lab, "source": "synthetic" if syn else "real", "x": k} for k, (lab, syn) in enumerate(zip(LABELS, SYN))]
    s = AdaptiveRatioSampler.from_datalist(items, ratios=0.5)
    loader = DataLoader(Dataset(items), sampler=s, batch_size=8, num_workers=0)
    seen = [int(x) for b in loader for x in b["x"]]
    assert len(seen) == len(s) == 60 and seen == list(s)
    state = s.state_dict()
    t = AdaptiveRatioSampler.from_datalist(items)
    t.load_state_dict(state)
    assert list(t) == list(s)


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    s = AdaptiveRatioSampler(LABELS, SYN, ratios=[0.0, 0.3, 0.6], seed=5)  # rank/world from the process group
    s.set_epoch(2)
    shard = torch.tensor(list(s))
    gathered = [torch.zeros_like(shard) for _ in range(world)]
    dist.all_gather(gathered, shard)
    if rank == 0:
        torch.save([g.tolist() for g in gathered], out)
    dist.destroy_process_group()


def test_two_process_gloo_shards_are_disjoint_and_cover_the_plan(tmp_path):
    out = str(tmp_path / "shards.pt")
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    shards = torch.load(out)
    ref = AdaptiveRatioSampler(LABELS, SYN, ratios=[0.0, 0.3, 0.6], seed=5, num_replicas=1, rank=0)
    ref.set_epoch(2)
    plan = ref.epoch_indices().tolist()  # 60 items, even: no padding
    assert len(shards[0]) == len(shards[1]) == 30
    positions = [list(range(0, 60, 2)), list(range(1, 60, 2))]
    assert shards[0] == [plan[p] for p in positions[0]] and shards[1] == [plan[p] for p in positions[1]]
    assert sorted(shards[0] + shards[1]) == sorted(plan)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=60),
    st.lists(st.booleans(), min_size=60, max_size=60),
    st.lists(st.floats(0, 1), min_size=6, max_size=6),
    st.integers(1, 4),
)
def test_plan_property(labels, syn, ratios, replicas):
    syn = syn[: len(labels)]
    if all(syn):
        syn[0] = False
    shards = []
    for rank in range(replicas):
        s = AdaptiveRatioSampler(labels, syn, num_classes=6, ratios=ratios, num_replicas=replicas, rank=rank, seed=1)
        shards.append(list(s))
    plan = s.plan()
    full = s.epoch_indices().tolist()
    assert len(full) == sum(s.targets)
    got = Counter((labels[i], syn[i]) for i in full)
    for c in range(6):
        assert got.get((c, False), 0) == plan["real"][c] and got.get((c, True), 0) == plan["synthetic"][c]
    assert len({len(x) for x in shards}) == 1 and sum(map(len, shards)) >= len(full)


def test_seeds_give_independent_streams():
    # with a seed + epoch generator, (seed 1, epoch e) repeated (seed 0, epoch e + 1): "three seeds" shared their epochs
    plans = {}
    for seed in (0, 1, 2):
        s = AdaptiveRatioSampler(LABELS, SYN, ratios=0.5, seed=seed)
        for epoch in range(4):
            s.set_epoch(epoch)
            plans[seed, epoch] = list(s)
    assert len({tuple(p) for p in plans.values()}) == len(plans)


def test_ratios_set_mid_epoch_replan_the_rest():
    items = [{"label": lab, "source": "synthetic" if syn else "real", "x": k} for k, (lab, syn) in enumerate(zip(LABELS, SYN))]
    s = AdaptiveRatioSampler.from_datalist(items, ratios=0.0, seed=4)
    loader = DataLoader(Dataset(items), sampler=s, batch_size=6, num_workers=0)
    seen = []
    for b, batch in enumerate(loader):
        seen.append([int(x) for x in batch["x"]])
        if b == 4:  # after 30 of 60 samples, every class that has a synthetic pool goes fully synthetic
            s.set_ratios(0.9)
    first, rest = [i for b in seen[:5] for i in b], [i for b in seen[5:] for i in b]
    assert len(first) == len(rest) == 30
    assert not any(SYN[i] for i in first)
    syn_share = np.mean([SYN[i] for i in rest if LABELS[i] != 0])
    assert syn_share > 0.7  # 0.9 of classes 1 and 2 in expectation
    # reproducible: the same calls at the same step give the same epoch
    s2 = AdaptiveRatioSampler.from_datalist(items, ratios=0.0, seed=4)
    it, again = iter(s2), []
    for k in range(60):
        if k == 30:
            s2.set_ratios(0.9)
        again.append(next(it))
    assert again == first + rest


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": [0, 1.7, 1]}, "labels must be integers; entry 1 is 1.7"),
        ({"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"epoch_size": -4}, "epoch_size must be a positive integer or None, got -4"),
        ({"target": "distribution", "epoch_size": 6, "class_weights": [1, float("nan"), 1]}, "class_weights must be 3 finite"),
        ({"target": "distribution", "epoch_size": 6, "class_weights": [1, float("inf"), 1]}, "class_weights must be 3 finite"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    kwargs = {"labels": LABELS, "synthetic": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        AdaptiveRatioSampler(**kwargs)


def test_negative_epoch_is_refused():
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        AdaptiveRatioSampler(LABELS, SYN).set_epoch(-1)
