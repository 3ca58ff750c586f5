"""Build a ratio policy by name, so a bundle switches policies with one override."""

from __future__ import annotations

from monai_breastlt.rl.agents import MultiAgentRatioPolicy
from monai_breastlt.rl.policies import FixedRatioPolicy, HeuristicRatioPolicy, RatioPolicy

__all__ = ["POLICY_NAMES", "build_ratio_policy"]

POLICY_NAMES = ("rl", "heuristic", "fixed", "fill", "none")


def build_ratio_policy(
    name: str = "rl",
    ratio: float = 0.5,
    step: float = 0.1,
    max_ratio: float = 0.9,
    n_steps: int = 4,
    seed: int = 0,
    model_path: str | None = None,
    reward_smoothing: float = 0.0,
    ppo_learning_rate: float | None = None,
    ppo_n_epochs: int | None = None,
    **kwargs,
) -> RatioPolicy:
    """
    Args:
        name: ``"rl"`` (multi-agent PPO), ``"heuristic"``, ``"fixed"`` (``ratio`` for every class), ``"fill"``
            (top up to the head class) or ``"none"`` (real data only).
        ratio: the ratio of ``"fixed"``.
        step: ratio step of ``"rl"`` and ``"heuristic"``.
        max_ratio: upper bound of every ratio.
        n_steps: validations between PPO updates (``"rl"``).
        seed: PPO seed (``"rl"``).
        model_path: a pre-trained PPO policy (``"rl"``).
        reward_smoothing: moving-average weight of the validation figures the agents see and are rewarded by
            (``"rl"``; see :class:`~monai_breastlt.rl.ClassAgents`).
        ppo_learning_rate: PPO's learning rate (``"rl"``; ``None``: the agents' default).
        ppo_n_epochs: PPO's passes over the samples of each update (``"rl"``; ``None``: the agents' default).
        kwargs: further arguments of the chosen class.
    """
    if name == "rl":
        agent_kwargs = {**kwargs.pop("agent_kwargs", {}), "smoothing": reward_smoothing}
        chosen = {"learning_rate": ppo_learning_rate, "n_epochs": ppo_n_epochs}
        ppo_kwargs = {**kwargs.pop("ppo_kwargs", {}), **{k: v for k, v in chosen.items() if v is not None}}
        return MultiAgentRatioPolicy(step=step, max_ratio=max_ratio, n_steps=n_steps, seed=seed, model_path=model_path,
                                     agent_kwargs=agent_kwargs, ppo_kwargs=ppo_kwargs, **kwargs)
    if name == "heuristic":
        return HeuristicRatioPolicy(step=step, max_ratio=max_ratio, **kwargs)
    if name == "fixed":
        return FixedRatioPolicy(ratio, max_ratio=max_ratio)
    if name == "fill":
        return FixedRatioPolicy("fill", max_ratio=max_ratio)
    if name == "none":
        return FixedRatioPolicy(0.0, max_ratio=max_ratio)
    raise ValueError(f"policy name must be one of {POLICY_NAMES}, got '{name}'.")
