"""``MultiAgentRatioPolicy``: one agent per class, one parameter-shared stable-baselines3 PPO policy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from monai_breastlt.rl.env import ClassAgentsVecEnv, RatioProcess
from monai_breastlt.rl.observation import ClassAgents
from monai_breastlt.rl.policies import RatioPolicy
from monai_breastlt.utils import atomic_open, atomic_write_json, read_json

PPO, _ = optional_import("stable_baselines3", name="PPO")
configure_logger, _ = optional_import("stable_baselines3.common.logger", name="configure")
obs_as_tensor, _ = optional_import("stable_baselines3.common.utils", name="obs_as_tensor")

__all__ = ["MultiAgentRatioPolicy"]


class _LiveProcess:
    """Placeholder process for online learning: the training run steps itself, the env only lends spaces."""

    def __init__(self, class_counts: Sequence[int]) -> None:
        self.class_counts = list(class_counts)
        self.horizon = 1

    def reset(self, seed: int | None = None) -> dict:
        raise RuntimeError("an online MultiAgentRatioPolicy is stepped by update(), not by PPO.learn().")

    step = reset


class MultiAgentRatioPolicy(RatioPolicy):
    """
    Per-class ratio agents sharing one PPO policy (stable-baselines3), learning online during training.

    Every validation is one step for every class agent: ``update(report)`` rewards the previous actions (see
    :class:`~monai_breastlt.rl.observation.ClassAgents`), stores the transition in PPO's rollout buffer, runs a
    PPO update every ``n_steps`` validations, and samples the next action (down/keep/up by ``step``) per class.
    Agents can be pre-trained on a proxy (:meth:`pretrain` with a :class:`~monai_breastlt.rl.env.ToyRatioProcess`
    or short real runs), saved and loaded.

    Args:
        step: ratio change of one action.
        max_ratio: upper bound of every ratio.
        n_steps: validations between PPO updates (``k``).
        learn_online: update PPO during training; ``False`` only acts.
        deterministic: take the most likely action instead of sampling.
        seed: seed of PPO (torch and numpy generators of SB3).
        ppo_kwargs: extra PPO arguments (``learning_rate``, ``n_epochs``, ``gamma``, ``ent_coef``...).
        agent_kwargs: reward and observation settings of ``ClassAgents`` (``metric``, ``head_penalty``...).
        model_path: a saved policy (``.zip``) to start from.
        device: torch device of the PPO networks.
    """

    def __init__(
        self,
        step: float = 0.1,
        max_ratio: float = 0.9,
        n_steps: int = 4,
        learn_online: bool = True,
        deterministic: bool = False,
        seed: int = 0,
        ppo_kwargs: dict | None = None,
        agent_kwargs: dict | None = None,
        model_path: str | os.PathLike | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(max_ratio)
        self.step, self.n_steps, self.learn_online, self.deterministic = step, n_steps, learn_online, deterministic
        self.seed, self.device = seed, device
        self.ppo_kwargs = {"learning_rate": 3e-4, "n_epochs": 4, "gamma": 0.9, "gae_lambda": 0.9, "ent_coef": 0.01}
        self.ppo_kwargs.update(ppo_kwargs or {})
        self.agent_kwargs = dict(agent_kwargs or {})
        self.model_path = model_path
        self.model = None
        self.agents: ClassAgents | None = None
        self._pending: tuple | None = None
        self.num_updates = 0

    def _build(self, env) -> None:
        kwargs = {"n_steps": self.n_steps, "batch_size": self.n_steps * env.num_envs, **self.ppo_kwargs}
        if self.model_path is not None:
            self.model = PPO.load(self.model_path, env=env, device=self.device, custom_objects={"n_steps": self.n_steps})
        else:
            self.model = PPO("MlpPolicy", env, seed=self.seed, device=self.device, verbose=0, **kwargs)
        self.model.set_logger(configure_logger(None, [""]))

    def reset(self, class_counts: Sequence[int], ratios: Sequence[float] | float = 0.0) -> None:
        super().reset(class_counts, ratios)
        self.agents = ClassAgents(class_counts, self.step, self.max_ratio, **self.agent_kwargs)
        self.agents.reset(self.ratios)
        env = ClassAgentsVecEnv(_LiveProcess(class_counts), step=self.step, max_ratio=self.max_ratio, **self.agent_kwargs)
        if self.model is None or self.model.n_envs != env.num_envs:
            self._build(env)
        self._pending = None

    def pretrain(self, process: RatioProcess, total_timesteps: int) -> MultiAgentRatioPolicy:
        """Train the shared policy on a proxy process (``total_timesteps`` counts class-agent steps)."""
        env = ClassAgentsVecEnv(process, step=self.step, max_ratio=self.max_ratio, **self.agent_kwargs)
        env.seed(self.seed)
        if self.model is None or self.model.n_envs != env.num_envs:
            self._build(env)
        else:
            self.model.set_env(env)
        self.model.learn(total_timesteps=total_timesteps, reset_num_timesteps=False)
        return self

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions of the shared policy for per-class observations ``(C, OBS_DIM)`` (no learning)."""
        actions, _ = self.model.predict(obs, deterministic=self.deterministic)
        return np.asarray(actions)

    def update(self, report: dict, progress: float) -> np.ndarray:
        self._check_reset()
        obs, rewards = self.agents.observe(report, progress)
        obs = np.clip(obs, -1, 1)
        policy = self.model.policy
        obs_t = obs_as_tensor(obs, policy.device)
        if self.learn_online and self._pending is not None:
            last_obs, last_actions, last_values, last_log_probs, start = self._pending
            buf = self.model.rollout_buffer
            buf.add(last_obs, last_actions, rewards, start, last_values, last_log_probs)
            if buf.full:
                with torch.no_grad():
                    last = policy.predict_values(obs_t)
                buf.compute_returns_and_advantage(last_values=last, dones=np.zeros(len(obs)))
                self.model.train()  # one PPO update on the last n_steps validations of every class agent
                buf.reset()
                self.num_updates += 1
        policy.set_training_mode(False)
        with torch.no_grad():
            actions, values, log_probs = policy(obs_t, deterministic=self.deterministic)
        actions = actions.cpu().numpy()
        start = np.full(len(obs), self._pending is None, dtype=bool)
        self._pending = (obs, actions, values, log_probs, start)
        self.ratios = self.agents.apply(actions)
        return self.ratios.copy()

    def save(self, path: str | os.PathLike) -> Path:
        """Save the shared PPO policy (SB3 ``.zip``, written atomically) and the agents' state (``.json``)."""
        path = Path(path)
        with atomic_open(path.with_suffix(".zip"), "wb") as f:
            self.model.save(f)
        atomic_write_json(self.state_dict(), path.with_suffix(".json"))
        return path.with_suffix(".zip")

    def load(self, path: str | os.PathLike) -> MultiAgentRatioPolicy:
        """Load a policy saved by :meth:`save`; call :meth:`reset` first to set the classes."""
        path = Path(path)
        self.model_path = path.with_suffix(".zip")
        if self.agents is None:
            raise RuntimeError("call reset(class_counts) before load(): the number of agents comes from the classes.")
        self.model = None
        self.reset(self.class_counts, self.ratios)
        if path.with_suffix(".json").is_file():
            self.load_state_dict(read_json(path.with_suffix(".json")))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.num_updates = int(state.get("num_updates", 0))
        if self.agents is not None and self.ratios is not None:
            self.agents.ratios = self.ratios.copy()
