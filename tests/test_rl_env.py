from __future__ import annotations

import numpy as np
from stable_baselines3.common.env_checker import check_env

from monai_breastlt.rl import OBS_DIM, ClassAgents, ClassAgentsVecEnv, RatioProcessEnv, ToyRatioProcess

COUNTS = [200, 90, 40, 20, 9, 4]


def test_gym_env_passes_check_env():
    env = RatioProcessEnv(ToyRatioProcess(COUNTS))
    check_env(env, warn=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(COUNTS) * OBS_DIM,)


def test_vec_env_one_entry_per_class_and_episode_end():
    venv = ClassAgentsVecEnv(ToyRatioProcess(COUNTS, horizon=3))
    obs = venv.reset()
    assert obs.shape == (6, OBS_DIM) and venv.num_envs == 6
    for t in range(3):
        obs, rew, done, infos = venv.step(np.full(6, 2))
    assert done.all() and "terminal_observation" in infos[0]
    assert np.allclose(infos[0]["terminal_observation"][1], 0.3)  # class 0 ratio after 3 increases


def test_rewards_follow_metric_changes_and_head_penalty():
    agents = ClassAgents([100, 10], head_penalty=2.0, class_weight=0.5, scale=1.0)
    base = {"recall": [0.8, 0.2], "f1": [0.8, 0.2], "macro_f1": 0.5, "balanced_accuracy": 0.5, "head_recall": 0.8}
    agents.observe(base, 0)
    better_tail = {**base, "recall": [0.8, 0.4], "f1": [0.8, 0.4], "macro_f1": 0.6, "balanced_accuracy": 0.6}
    _, r = agents.observe(better_tail, 0.5)
    assert np.allclose(r, [0.1, 0.1 + 0.5 * 0.2])
    worse_head = {**better_tail, "recall": [0.6, 0.4], "f1": [0.6, 0.4], "macro_f1": 0.5, "head_recall": 0.6}
    _, r = agents.observe(worse_head, 0.6)
    assert np.allclose(r, [-0.1 - 0.1 - 0.4, -0.1 - 0.4])
