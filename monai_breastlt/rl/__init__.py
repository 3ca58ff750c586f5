from __future__ import annotations

from .agents import MultiAgentRatioPolicy
from .env import ClassAgentsVecEnv, RatioProcess, RatioProcessEnv, ToyRatioProcess
from .observation import NUM_ACTIONS, OBS_DIM, ClassAgents
from .policies import FixedRatioPolicy, HeuristicRatioPolicy, RatioPolicy
from .factory import POLICY_NAMES, build_ratio_policy
