from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_breastlt.rl import ClassAgents, MultiAgentRatioPolicy, ToyRatioProcess, build_ratio_policy

COUNTS = [200, 90, 40, 20, 9, 4]


def _rollout(act, seed):
    proc = ToyRatioProcess(COUNTS, horizon=12, seed=seed)
    agents = ClassAgents(COUNTS)
    agents.reset(0.0)
    obs, _ = agents.observe(proc.reset(), 0.0)
    for t in range(proc.horizon):
        obs, _ = agents.observe(proc.step(agents.apply(act(np.clip(obs, -1, 1)))), (t + 1) / proc.horizon)
    return np.abs(agents.ratios - proc.optimum).mean()


def test_ppo_agents_move_ratios_toward_the_hidden_optimum():
    """Honesty test: the agents never see r*, only metric changes; a fixed step budget must beat random actions."""
    policy = MultiAgentRatioPolicy(seed=0, deterministic=True, n_steps=32, ppo_kwargs={"n_epochs": 10, "learning_rate": 1e-3})
    policy.pretrain(ToyRatioProcess(COUNTS, horizon=12, seed=0), total_timesteps=12_000)
    learned = np.mean([_rollout(policy.act, s) for s in range(1, 6)])
    rng = np.random.default_rng(0)
    random = np.mean([_rollout(lambda o: rng.integers(0, 3, len(o)), s) for s in range(1, 6)])
    assert learned < 0.15 and learned < 0.6 * random, (learned, random)


def test_online_updates_save_and_load(tmp_path):
    policy = MultiAgentRatioPolicy(seed=1, n_steps=2)
    policy.reset(COUNTS, 0.2)
    proc = ToyRatioProcess(COUNTS, seed=0)
    report = proc.reset()
    for epoch in range(1, 6):
        ratios = policy.update(report, epoch / 5)
        assert ratios.shape == (6,) and (0 <= ratios).all() and (ratios <= 0.9).all()
        report = proc.step(ratios)
    assert policy.num_updates == 2  # transitions 1-2 and 3-4 filled the 2-step buffer twice
    path = policy.save(tmp_path / "agents")
    other = MultiAgentRatioPolicy(seed=1, n_steps=2, deterministic=True)
    other.reset(COUNTS)
    other.load(path)
    obs = np.clip(policy.agents.observe(report, 1.0)[0], -1, 1)
    policy.deterministic = True
    assert np.array_equal(policy.act(obs), other.act(obs))
    assert np.allclose(other.ratios, policy.ratios) and other.num_updates == 2


def _policy_shift(policy) -> float:
    """How far five validations (two PPO updates of 2 steps x 6 agents) move the shared policy's weights."""
    policy.reset(COUNTS, 0.2)
    before = [p.detach().clone() for p in policy.model.policy.parameters()]
    proc = ToyRatioProcess(COUNTS, seed=0)
    report = proc.reset()
    for epoch in range(1, 6):
        report = proc.step(policy.update(report, epoch / 5))
    assert policy.num_updates == 2
    return float(sum((p.detach() - b).abs().sum() for p, b in zip(policy.model.policy.parameters(), before)))


def test_ppo_settings_reach_the_agents_and_set_how_far_their_few_updates_move_them():
    """A run gives the agents a few updates of few samples: at the default step size they barely move the policy, and
    the bundle's ``ppo_learning_rate`` / ``ppo_n_epochs`` are what lets them move it further."""
    fast = build_ratio_policy("rl", n_steps=2, seed=1, ppo_learning_rate=3e-3, ppo_n_epochs=20)
    assert fast.ppo_kwargs["learning_rate"] == 3e-3 and fast.ppo_kwargs["n_epochs"] == 20
    assert _policy_shift(fast) > 10 * _policy_shift(build_ratio_policy("rl", n_steps=2, seed=1))
    assert build_ratio_policy("heuristic", ppo_learning_rate=3e-3, ppo_n_epochs=20).update is not None  # ignored there


def test_state_dict_resumes_learning_exactly(tmp_path):
    """A policy restored from its checkpoint state (weights-only load) continues exactly like the original."""
    from monai_breastlt.utils import atomic_torch_save, torch_load_safe

    def make():
        p = MultiAgentRatioPolicy(seed=3, n_steps=3)
        p.reset(COUNTS, 0.2)
        return p

    proc = ToyRatioProcess(COUNTS, seed=0)
    report = proc.reset()
    a = make()
    for epoch in range(1, 5):  # 4 validations: one PPO update (3-step buffer), one transition pending in the buffer
        report = proc.step(a.update(report, epoch / 8))
    assert a.num_updates == 1 and a.model.rollout_buffer.pos == 0 and a._pending is not None
    atomic_torch_save(a.state_dict(), tmp_path / "policy.pt")
    b = make()
    b.load_state_dict(torch_load_safe(tmp_path / "policy.pt"))
    out = {}
    for name, policy in (("a", a), ("b", b)):
        torch.manual_seed(7)
        np.random.seed(7)
        r, ratios = report, []
        for epoch in range(5, 9):  # crosses the next PPO update
            ratios.append(policy.update(r, epoch / 8))
            r = ToyRatioProcess(COUNTS, seed=epoch).reset()
        out[name] = (np.array(ratios), [p.detach().clone() for p in policy.model.policy.parameters()], policy.num_updates)
    assert np.array_equal(out["a"][0], out["b"][0]) and out["a"][2] == out["b"][2] == 2
    assert all(torch.equal(x, y) for x, y in zip(out["a"][1], out["b"][1]))
    with pytest.raises(FileNotFoundError, match="no saved ratio policy"):
        make().load(tmp_path / "missing.pt")


def test_sb3_zip_weights_load_without_unpickling(tmp_path):
    """An SB3 .zip is read for its tensors only: a malicious pickled 'data' entry is never executed."""
    import base64

    import os
    import pickle
    import zipfile

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    src = MultiAgentRatioPolicy(seed=5, n_steps=2)
    src.reset(COUNTS, 0.2)
    clean = tmp_path / "clean.zip"
    src.model.save(clean)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "data":
                bad = base64.b64encode(pickle.dumps(Payload())).decode()
                data = ('{"policy_class": {":serialized:": "%s"}, "lr_schedule": {":serialized:": "%s"}}' % (bad, bad)).encode()
            zout.writestr(item, data)
    loaded = MultiAgentRatioPolicy(seed=9, n_steps=2, model_path=evil, deterministic=True)
    loaded.reset(COUNTS, 0.2)
    assert not (tmp_path / "pwned").exists()
    obs = np.clip(np.random.default_rng(0).normal(size=(6, 12)), -1, 1).astype(np.float32)
    src.deterministic = True
    assert np.array_equal(src.act(obs), loaded.act(obs))  # the weights did arrive

