from __future__ import annotations

import numpy as np
import pytest

from monai_breastlt.rl import FixedRatioPolicy, HeuristicRatioPolicy


def _report(recall, head=0.8):
    return {"recall": recall, "support": [1] * len(recall), "groups": ["head", "medium", "tail"], "head_recall": head}


def test_fixed_and_fill():
    p = FixedRatioPolicy(0.3)
    p.reset([100, 50, 10])
    assert p.update(_report([1, 1, 1]), 0.5).tolist() == [0.3, 0.3, 0.3]
    f = FixedRatioPolicy("fill", max_ratio=0.85)
    f.reset([100, 50, 10])
    assert np.allclose(f.update(_report([1, 1, 1]), 0.5), [0.0, 0.5, 0.85])
    with pytest.raises(RuntimeError, match="reset"):
        FixedRatioPolicy().update(_report([1, 1, 1]), 0)


def test_heuristic_raises_lagging_and_backs_off_on_head_drop():
    p = HeuristicRatioPolicy(step=0.1)
    p.reset([100, 50, 10], 0.2)
    r = p.update(_report([0.9, 0.55, 0.2], head=0.9), 0.1)  # mean 0.55
    assert np.allclose(r, [0.1, 0.2, 0.3])  # head leads: down; tail lags: up
    r = p.update(_report([0.7, 0.6, 0.5], head=0.7), 0.2)  # head fell by 0.2: non-head ratios back off
    assert np.allclose(r, [0.0, 0.1, 0.2])
    q = HeuristicRatioPolicy()
    q.reset([1, 1, 1])
    q.load_state_dict(p.state_dict())
    assert np.allclose(q.ratios, r) and q._last_head == 0.7
