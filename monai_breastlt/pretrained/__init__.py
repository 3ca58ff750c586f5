"""Pretrained phase-1 models for the built-in phantom, shipped as package data in ``pretrained/phantom``."""

from __future__ import annotations

from .models import MANIFEST_NAME, MODEL_FILES, export_pretrained, judge_network, load_pretrained, phantom_models_dir, read_pretrained
