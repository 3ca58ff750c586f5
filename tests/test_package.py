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


def test_library_imports_neither_the_cli_nor_the_benchmarks():
    from pathlib import Path

    root = Path(monai_breastlt.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] not in ("bench", "cli", "__main__.py")  # __main__ is the command line itself
        and any(s in p.read_text() for s in ("monai_breastlt.bench", "monai_breastlt.cli", "from .bench", "from .cli"))
    ]
    assert offenders == []


def test_bundles_ship_inside_the_package():
    from monai_breastlt.workflows import find_bundles

    syn, cls = find_bundles()
    assert syn.parent == cls.parent == (__import__("pathlib").Path(monai_breastlt.__file__).parent / "bundles")


def test_pretrained_models_are_package_data():
    """setup.cfg's package data covers every file a pretrained-models folder holds, so a wheel ships the demo's models."""
    import configparser
    from fnmatch import fnmatch
    from pathlib import Path

    from monai_breastlt.pretrained import MANIFEST_NAME, MODEL_FILES, phantom_models_dir

    cfg = configparser.ConfigParser()
    cfg.read(Path(monai_breastlt.__file__).parents[1] / "setup.cfg")
    patterns = cfg["options.package_data"]["monai_breastlt"].split()
    root = Path(monai_breastlt.__file__).parent
    for name in (*MODEL_FILES, MANIFEST_NAME):
        rel = (phantom_models_dir() / name).relative_to(root).as_posix()
        assert any(fnmatch(rel, p) for p in patterns), rel
