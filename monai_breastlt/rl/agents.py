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
from monai_breastlt.utils import atomic_torch_save, checkpoint_load_problem, torch_load_safe

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
        model_path: a saved policy to start from: ``.pt`` from :meth:`save`, or the weights of an SB3 ``.zip``.
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
        self.model = PPO("MlpPolicy", env, seed=self.seed, device=self.device, verbose=0, **kwargs)
        self.model.set_logger(configure_logger(None, [""]))
        if self.model_path is not None:
            self._load_parameters(self.model_path)

    def _load_parameters(self, path: str | os.PathLike) -> None:
        """Weights only, never unpickled objects: our ``.pt`` (``torch.load(weights_only=True)``) or an SB3 ``.zip``
        through ``set_parameters`` (which reads only the ``.pth`` tensors of the archive, weights-only too)."""
        path = Path(path)
        if path.suffix != ".zip":
            self.load_state_dict(torch_load_safe(path))
            return
        try:
            self.model.set_parameters(str(path), exact_match=True, device=self.device)
        except Exception as e:  # SB3 passes torch's multi-paragraph refusals and zip errors through
            raise ValueError(f"{path}: not usable as SB3 policy weights: {checkpoint_load_problem(path, e)}") from e

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
        """Save the shared PPO policy and the agents' state to ``<path>.pt`` (atomically; tensors and plain
        values only, so :meth:`load` never unpickles code)."""
        path = Path(path).with_suffix(".pt")
        atomic_torch_save(self.state_dict(), path)
        return path

    def load(self, path: str | os.PathLike) -> MultiAgentRatioPolicy:
        """Load a policy saved by :meth:`save` (or SB3 ``.zip`` weights); call :meth:`reset` first to set the classes."""
        if self.agents is None:
            raise RuntimeError("call reset(class_counts) before load(): the number of agents comes from the classes.")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved ratio policy.")
        self._load_parameters(path)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume learning exactly: ratios, PPO weights and optimizer, the partly filled rollout
        buffer, the pending transition and the agents' previous report. Tensors and plain values only."""
        state: dict[str, Any] = {**super().state_dict(), "num_updates": self.num_updates}
        if self.model is not None:
            buf = self.model.rollout_buffer
            state["ppo"] = self.model.get_parameters()
            state["ppo_n_updates"] = int(self.model._n_updates)
            state["rollout"] = {"pos": int(buf.pos), "full": bool(buf.full),
                                **{k: torch.as_tensor(getattr(buf, k)) for k in _BUFFER_FIELDS}}
        if self._pending is not None:
            state["pending"] = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v.clone()
                                for k, v in zip(_PENDING_FIELDS, self._pending)}
        if self.agents is not None:
            prev = self.agents.prev
            state["agents"] = {"last_move": self.agents.last_move.tolist(),
                               "prev": None if prev is None else {k: prev[k] for k in _REPORT_FIELDS if k in prev}}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.num_updates = int(state.get("num_updates", 0))
        if self.agents is not None and self.ratios is not None:
            self.agents.ratios = self.ratios.copy()
        if "ppo" in state:
            if self.model is None:
                raise RuntimeError("call reset(class_counts) before loading a PPO state.")
            self.model.set_parameters(state["ppo"], exact_match=True, device=self.device)
            self.model._n_updates = int(state.get("ppo_n_updates", 0))
        if "rollout" in state and self.model is not None:
            buf, r = self.model.rollout_buffer, state["rollout"]
            for k in _BUFFER_FIELDS:
                if tuple(r[k].shape) != getattr(buf, k).shape:
                    raise ValueError(f"saved rollout buffer '{k}' has shape {tuple(r[k].shape)}, expected {getattr(buf, k).shape} "
                                     "(another number of classes or n_steps).")
                getattr(buf, k)[...] = r[k].numpy()
            buf.pos, buf.full = int(r["pos"]), bool(r["full"])
        if "pending" in state:
            p = state["pending"]
            self._pending = (p["obs"].numpy(), p["actions"].numpy(), p["values"], p["log_probs"], p["start"].numpy())
        if "agents" in state and self.agents is not None:
            self.agents.last_move = np.asarray(state["agents"]["last_move"], dtype=float)
            self.agents.prev = state["agents"]["prev"]


_BUFFER_FIELDS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")
_PENDING_FIELDS = ("obs", "actions", "values", "log_probs", "start")
_REPORT_FIELDS = ("recall", "f1", "precision", "macro_f1", "balanced_accuracy", "g_mean", "head_recall", "medium_recall", "tail_recall", "accuracy")
