from __future__ import annotations

import subprocess
import sys

import monai_breastlt


def test_public_api_and_version():
    assert monai_breastlt.__version__ == "0.1.0"
    for name in monai_breastlt.__all__:
        assert getattr(monai_breastlt, name) is not None
    assert monai_breastlt.AdaptiveRatioSampler is monai_breastlt.data.AdaptiveRatioSampler


def test_data_imports_neither_rl_nor_synthesis_nor_sb3():
    code = "import sys, monai_breastlt.data; print(sorted(m for m in sys.modules if m.startswith(('monai_breastlt.rl', 'monai_breastlt.synthesis', 'stable_baselines3'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
