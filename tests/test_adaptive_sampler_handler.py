from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler, from_engine
from monai.networks.nets import ResNet

from monai_breastlt.data import AdaptiveRatioSampler, load_datalist, long_tail_groups
from monai_breastlt.handlers import AdaptiveSamplerHandler
from monai_breastlt.metrics import LongTailMetric
from monai_breastlt.rl import MultiAgentRatioPolicy
from monai_breastlt.transforms import ultrasound_preprocessing


def _pipeline(tiny_phantom, policy, epochs=3, validate_every=None):
    train, classes = load_datalist(tiny_phantom, "training")
    val, _ = load_datalist(tiny_phantom, "validation")
    # stand-in synthetic pool: the training images flagged synthetic (the sampler only reads label and source)
    items = train + [{**i, "source": "synthetic", "image": i["image"]} for i in train]
    pre = ultrasound_preprocessing(32)
    sampler = AdaptiveRatioSampler.from_datalist(items, num_classes=len(classes), seed=0)
    torch.manual_seed(0)
    net = ResNet("basic", [1, 1, 1, 1], spatial_dims=2, n_input_channels=1, num_classes=len(classes), block_inplanes=[8, 8, 16, 16])
    loss = torch.nn.CrossEntropyLoss()
    prep = lambda b, d, nb, **kw: (b["image"].to(d), b["label"].long().to(d))  # noqa: E731
    counts = np.bincount([i["label"] for i in train], minlength=len(classes))
    evaluator = SupervisedEvaluator(
        "cpu",
        DataLoader(Dataset(val, pre), batch_size=8),
        net,
        prepare_batch=prep,
        key_val_metric={"long_tail": LongTailMetric(len(classes), long_tail_groups(counts), output_transform=from_engine(["pred", "label"]))},
    )
    handler = AdaptiveSamplerHandler(sampler, policy, evaluator, class_names=classes, initial_ratios=0.3)
    trainer = SupervisedTrainer(
        "cpu", epochs, DataLoader(Dataset(items, pre), sampler=sampler, batch_size=8), net,
        torch.optim.Adam(net.parameters(), 1e-3), loss, prepare_batch=prep,
        train_handlers=[ValidationHandler(validate_every or 1, evaluator, epoch_level=validate_every is None), handler],
    )
    return trainer, evaluator, sampler, handler


def test_handler_changes_and_records_ratios(tiny_phantom):
    policy = MultiAgentRatioPolicy(seed=0, n_steps=2, ppo_kwargs={"n_epochs": 2})
    trainer, evaluator, sampler, handler = _pipeline(tiny_phantom, policy)
    epochs_seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_seen.append(sampler.epoch))
    trainer.run()
    history = trainer.state.ratio_history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len({tuple(h["ratios"]) for h in history} | {(0.3,) * 6}) > 1  # ratios moved away from the start
    assert np.allclose(history[-1]["ratios"], sampler.effective_ratios())
    assert epochs_seen == [1, 2, 3]  # MONAI's workflow calls set_epoch on our DistributedSampler subclass
    assert policy.num_updates == 1
    assert trainer.state.metrics["ratio/cyst"] == history[-1]["ratios"][2]  # for MONAI's MLFlowHandler
    state = handler.state_dict()
    assert len(state["sampler"]["ratios"]) == 6 and state["policy"]["num_updates"] == 1


def test_handler_needs_the_metric(tiny_phantom):
    from monai_breastlt.rl import FixedRatioPolicy

    trainer, evaluator, sampler, handler = _pipeline(tiny_phantom, FixedRatioPolicy(0.2), epochs=1)
    handler.metric_name = "missing"
    with pytest.raises(KeyError, match="no LongTailMetric named 'missing'"):
        trainer.run()


def test_handler_acts_at_every_iteration_level_validation(tiny_phantom):
    policy = MultiAgentRatioPolicy(seed=0, n_steps=2, ppo_kwargs={"n_epochs": 1})
    trainer, evaluator, sampler, handler = _pipeline(tiny_phantom, policy, epochs=2, validate_every=2)
    trainer.run()
    per_epoch = trainer.state.epoch_length
    history = trainer.state.ratio_history
    assert handler.decisions == len(history) == (2 * per_epoch) // 2 > 2  # several decisions per epoch
    assert [h["iteration"] for h in history] == list(range(2, 2 * per_epoch + 1, 2))
    assert policy.num_updates == (handler.decisions - 1) // 2  # n_steps 2; the first decision has no reward yet
    assert np.allclose(history[-1]["ratios"], sampler.effective_ratios())


def test_smoothed_agents_see_moving_averages():
    from monai_breastlt.rl import ClassAgents

    def report(f1):
        return {"recall": [f1, f1], "f1": [f1, f1], "macro_f1": f1, "balanced_accuracy": f1, "head_recall": f1, "groups": ["head", "tail"]}

    raw, smooth = ClassAgents([10, 2]), ClassAgents([10, 2], smoothing=0.75)
    for a in (raw, smooth):
        a.observe(report(0.5), 0.0)
    _, r_raw = raw.observe(report(0.9), 0.5)
    _, r_smooth = smooth.observe(report(0.9), 0.5)
    # the average moves a quarter of the way: 0.5 -> 0.6, so the reward is a quarter of the raw one
    assert np.allclose(r_smooth, r_raw / 4, atol=1e-5)
    assert smooth.prev["macro_f1"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="smoothing must be in"):
        ClassAgents([10, 2], smoothing=1.0)


def test_handler_decides_on_every_kth_validation(tiny_phantom):
    from monai_breastlt.rl import HeuristicRatioPolicy

    trainer, evaluator, sampler, handler = _pipeline(tiny_phantom, HeuristicRatioPolicy(), epochs=2, validate_every=1)
    handler.decide_every = 3
    trainer.run()
    n = 2 * trainer.state.epoch_length
    assert handler.validations == n and handler.decisions == n // 3
    assert [h["iteration"] for h in trainer.state.ratio_history] == list(range(3, n + 1, 3))
    with pytest.raises(ValueError, match="decide_every must be a positive integer"):
        AdaptiveSamplerHandler(sampler, HeuristicRatioPolicy(), evaluator, decide_every=0)
