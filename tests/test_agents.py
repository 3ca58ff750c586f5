from __future__ import annotations

import numpy as np

from monai_breastlt.rl import ClassAgents, MultiAgentRatioPolicy, ToyRatioProcess

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
