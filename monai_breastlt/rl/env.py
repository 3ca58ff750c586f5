"""Environments for the ratio agents: a toy process with a known optimum, a gymnasium env, a per-class VecEnv."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from monai.utils import optional_import

from monai_breastlt.data.profile import HEAD, long_tail_groups
from monai_breastlt.rl.observation import NUM_ACTIONS, OBS_DIM, ClassAgents

gym, _ = optional_import("gymnasium")
spaces, _ = optional_import("gymnasium", name="spaces")
VecEnv, _ = optional_import("stable_baselines3.common.vec_env", name="VecEnv", as_type="base")

__all__ = ["RatioProcess", "ToyRatioProcess", "RatioProcessEnv", "ClassAgentsVecEnv"]


class RatioProcess(Protocol):
    """A training run seen by the agents: ratios in, a validation report (see ``report_from_confusion``) out."""

    class_counts: Sequence[int]
    horizon: int

    def reset(self, seed: int | None = None) -> dict: ...

    def step(self, ratios: np.ndarray) -> dict: ...


class ToyRatioProcess:
    """
    A stand-in for a training run whose best ratio per class is known: class ``c``'s recall peaks at a hidden
    ratio ``r*_c`` and falls quadratically away from it, plus noise. By default ``r*_c`` grows towards the tail
    (``0.8 * (1 - sqrt(n_c / n_max))``), as synthetic data helps rare classes most. Used to pre-train agents
    on a cheap proxy and to test that they learn (their reward never sees ``r*``).

    Args:
        class_counts: real count per class.
        optimum: the hidden ``r*_c`` (default: from the counts as above).
        width: ratio distance at which the recall gain vanishes.
        noise: std of the recall noise.
        horizon: steps (epochs) per episode.
        seed: seed of the noise.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        optimum: Sequence[float] | None = None,
        width: float = 0.6,
        noise: float = 0.005,
        horizon: int = 12,
        seed: int = 0,
    ) -> None:
        self.class_counts = [int(c) for c in class_counts]
        rel = np.sqrt(np.asarray(self.class_counts, dtype=float) / max(self.class_counts))
        self.optimum = np.asarray(optimum, dtype=float) if optimum is not None else 0.8 * (1 - rel)
        self.base = 0.3 + 0.4 * rel
        self.width, self.noise, self.horizon = width, noise, horizon
        self.groups = long_tail_groups(self.class_counts)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> dict:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        return self.step(np.zeros(len(self.class_counts)))

    def step(self, ratios: np.ndarray) -> dict:
        gain = 0.25 * (1 - ((np.asarray(ratios) - self.optimum) / self.width) ** 2)
        recall = np.clip(self.base + gain + self.rng.normal(0, self.noise, len(gain)), 0, 1)
        head = [i for i, g in enumerate(self.groups) if g == HEAD]
        return {
            "recall": recall.tolist(),
            "f1": recall.tolist(),
            "support": self.class_counts,
            "groups": self.groups,
            "macro_f1": float(recall.mean()),
            "balanced_accuracy": float(recall.mean()),
            "head_recall": float(recall[head].mean()) if head else float("nan"),
        }


class RatioProcessEnv(gym.Env):
    """
    Centralised gymnasium view of a :class:`RatioProcess`: one MultiDiscrete action (down/keep/up per class),
    observation the flattened ``(C, OBS_DIM)`` class observations, reward the mean of the class rewards. It passes SB3's ``check_env`` and serves
    single-agent baselines; the parameter-shared agents use :class:`ClassAgentsVecEnv`.

    Args:
        process: the process to drive.
        agent_kwargs: passed to :class:`~monai_breastlt.rl.observation.ClassAgents` (step, weights...).
    """

    metadata = {"render_modes": []}
    render_mode = None

    def __init__(self, process: RatioProcess, **agent_kwargs: Any) -> None:
        super().__init__()
        self.process = process
        self.agents = ClassAgents(process.class_counts, **agent_kwargs)
        c = self.agents.num_classes
        self.observation_space = spaces.Box(-1.0, 1.0, (c * OBS_DIM,), np.float32)
        self.action_space = spaces.MultiDiscrete([NUM_ACTIONS] * c)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.agents.reset(0.0)
        obs, _ = self.agents.observe(self.process.reset(seed), 0.0)
        return np.clip(obs, -1, 1).ravel(), {}

    def step(self, action):
        ratios = self.agents.apply(np.asarray(action))
        self.t += 1
        obs, rewards = self.agents.observe(self.process.step(ratios), self.t / self.process.horizon)
        return np.clip(obs, -1, 1).ravel(), float(rewards.mean()), False, self.t >= self.process.horizon, {"ratios": ratios}


class ClassAgentsVecEnv(VecEnv):
    """
    One entry per class: the agents of all classes are the entries of one vectorised env, so a single SB3
    policy is shared by all of them (parameter-sharing multi-agent RL). Each entry observes its own class and
    is rewarded by :class:`~monai_breastlt.rl.observation.ClassAgents`; all entries step one shared process.

    Args:
        process: the process to drive (a proxy such as :class:`ToyRatioProcess`).
        agent_kwargs: passed to :class:`~monai_breastlt.rl.observation.ClassAgents`.
    """

    render_mode = None

    def __init__(self, process: RatioProcess, **agent_kwargs: Any) -> None:
        self.process = process
        self.agents = ClassAgents(process.class_counts, **agent_kwargs)
        super().__init__(
            self.agents.num_classes,
            spaces.Box(-1.0, 1.0, (OBS_DIM,), np.float32),
            spaces.Discrete(NUM_ACTIONS),
        )
        self.t = 0
        self._actions: np.ndarray | None = None

    def reset(self):
        seed = self._seeds[0]
        self._reset_seeds()
        self.t = 0
        self.agents.reset(0.0)
        obs, _ = self.agents.observe(self.process.reset(seed), 0.0)
        return np.clip(obs, -1, 1)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        ratios = self.agents.apply(self._actions)
        self.t += 1
        obs, rewards = self.agents.observe(self.process.step(ratios), self.t / self.process.horizon)
        obs = np.clip(obs, -1, 1)
        done = self.t >= self.process.horizon
        infos: list[dict] = [{"ratio": float(r)} for r in ratios]
        if done:
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i]
                info["TimeLimit.truncated"] = True
            obs = self.reset()
        return obs, rewards, np.full(self.num_envs, done), infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))
