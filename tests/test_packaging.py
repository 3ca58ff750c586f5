"""The wheel and the sdist carry both bundles, the metadata schema and the licence; the installed wheel finds its
bundles from outside the checkout. (CI also runs `demo --fast` from the installed wheel: .ci/run.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import monai_breastlt

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "monai_breastlt" / "bundles"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("not a source checkout")
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cmd in ([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                [sys.executable, "-c", f"from setuptools.build_meta import build_sdist; build_sdist({str(out)!r})"]):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def _shipped() -> set[str]:
    """Every file of the bundle folder in the checkout (paths inside the package)."""
    return {str(p.relative_to(ROOT)) for p in BUNDLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_and_sdist_carry_the_bundles_schema_and_licence(built):
    wheel = next(built.glob("monai_breastlt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _shipped() <= names
    assert {"monai_breastlt/bundles/metadata_schema.json", "monai_breastlt/bundles/breastlt_synthesis/configs/multi_gpu_train.yaml"} <= names
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert "Apache License" in zipfile.ZipFile(wheel).read(licence).decode() and (ROOT / "LICENSE").read_text().count("\n") > 150
    sdist = next(built.glob("monai_breastlt-*.tar.gz"))
    top = sdist.name[: -len(".tar.gz")]
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    assert _shipped() <= members and {"LICENSE", "MANIFEST.in", "tests/conftest.py", ".ci/run", "docs/bundles.md"} <= members, top


def test_installed_wheel_finds_its_bundles_outside_the_checkout(built, tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    wheel = str(next(built.glob("monai_breastlt-*.whl")))
    # the system's pip installs into the interpreter that runs it: the venv (the dependencies are already there)
    proc = subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = ("import monai_breastlt; from monai_breastlt.workflows import find_bundles; "
            "print(monai_breastlt.__file__); print(*find_bundles(), sep='\\n')")
    proc = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    package, *bundles = proc.stdout.split()
    site = str(venv.resolve())
    assert package.startswith(site) and all(b.startswith(site) for b in bundles) and package != monai_breastlt.__file__
    assert [Path(b).name for b in bundles] == ["breastlt_synthesis", "breastlt_classification"]
