"""Bad input to the bundles stops before the long work with the package's own one-line message: first and last around
the traceback of `python -m monai.bundle run`, and the whole message of the error a Python caller gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from monai_breastlt.data import load_datalist_file, write_datalist
from monai_breastlt.utils import bad_input_message
from monai_breastlt.workflows import default_bundles_dir, run_bundle

CLS = default_bundles_dir() / "breastlt_classification"
TINY = {"image_size": 32, "batch_size": 8, "max_epochs": 1, "policy_name": "none"}


class Payload:
    """What a malicious checkpoint carries: code run at unpickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _bundle_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(CLS), "--config_file", str(CLS / "configs/train.yaml"),
           "--meta_file", str(CLS / "configs/metadata.json"), "--logging_file", str(CLS / "configs/logging.conf"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _first_and_last(stderr: str) -> str:
    """The package's message, which must open the error report and end the output."""
    lines = stderr.strip().splitlines()
    errors = [n for n, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 2 and errors[-1] == len(lines) - 1, stderr[-3000:]
    assert lines[errors[0]] == lines[-1] and lines[errors[0] + 1].startswith("Traceback")
    return lines[-1]


def _refused(tmp_path: Path, **overrides) -> str:
    """The one-line message of a classification training run that must be refused."""
    with pytest.raises(Exception) as e:
        run_bundle(CLS, ["train.yaml"], **{"output_dir": str(tmp_path / "out"), **TINY, **overrides})
    message = bad_input_message(e.value)
    assert message is not None, e.value
    return message


def test_monai_bundle_run_prints_the_message_first_and_last(tiny_phantom, tmp_path):
    doc = load_datalist_file(tiny_phantom)
    bad = [doc["training"][0]["image"], doc["validation"][0]["image"]]
    data = tmp_path / "data"
    write_datalist(data / "datalist.json", {**{k: doc[k] for k in ("training", "validation", "test")},
                                            "training": [{**doc["training"][0], "image": str(data / "gone.png")}, *doc["training"][1:]],
                                            "validation": [{**doc["validation"][0], "image": str(data)}, *doc["validation"][1:]]}, doc["classes"])
    proc = _bundle_cli(tmp_path, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), "--image_size", "32")
    assert proc.returncode == 1 and bad
    line = _first_and_last(proc.stderr)
    assert line.startswith(f"error: {data / 'datalist.json'}: 2 unusable image file(s) among ")
    assert f"training entry 0 image {data / 'gone.png'}: file not found" in line
    assert f"validation entry 0 image {data}: is a folder, not an image file" in line
    assert not (tmp_path / "out" / "models").exists()  # stopped before training

    proc = _bundle_cli(tmp_path, "--dataset_dir", str(tiny_phantom.parent), "--output_dir", str(tmp_path / "out"), "--max_epoch", "3")
    assert _first_and_last(proc.stderr) == "error: unknown config key(s) for train.yaml: 'max_epoch' (did you mean 'max_epochs'?)."


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"policy_name": "bogus"}, "policy_name must be one of rl, heuristic, fixed, fill, none; got 'bogus'."),
        ({"policy_name": "heuristc"}, "policy_name must be one of rl, heuristic, fixed, fill, none; got 'heuristc' (did you mean 'heuristic'?)."),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0."),
        ({"image_size": 0}, "image_size must be an integer >= 1, got 0."),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0, got nan."),
        ({"loss_name": "focall"}, "loss_name must be one of ce, weighted_ce, focal, cb_focal, ldam, ldam_drw, balanced_softmax, "
                                  "logit_adjusted; got 'focall' (did you mean 'focal'?)."),
    ],
)
def test_settings_out_of_range_are_refused_first(tiny_phantom, tmp_path, overrides, message):
    assert _refused(tmp_path, dataset_dir=str(tiny_phantom.parent), **overrides) == message


def test_missing_dataset_dir_and_unusable_datalists_are_named(tiny_phantom, tmp_path):
    assert _refused(tmp_path, dataset_dir=str(tmp_path / "nowhere")) == (
        f"{tmp_path / 'nowhere' / 'datalist.json'}: datalist not found (the folder does not exist); pass --dataset_dir, a folder holding "
        "datalist.json (write one with `python -m monai_breastlt split SOURCE --out DIR/datalist.json`).")
    doc = load_datalist_file(tiny_phantom)
    write_datalist(tmp_path / "d" / "datalist.json", {"training": doc["training"] + doc["validation"], "validation": [], "test": doc["test"]},
                   doc["classes"])  # what `split --fractions 1 0 0` wrote before it was refused
    assert _refused(tmp_path, dataset_dir=str(tmp_path / "d")).startswith(
        f"{tmp_path / 'd' / 'datalist.json'}: section 'validation' is empty (present: training ")
    (tmp_path / "d" / "datalist.json").write_text(json.dumps({"classes": doc["classes"], "training": {}}))
    assert _refused(tmp_path, dataset_dir=str(tmp_path / "d")) == (
        f"{tmp_path / 'd' / 'datalist.json'}: section 'training' is dict {{}}, expected a list of entries.")
    assert _refused(tmp_path, dataset_dir=str(tiny_phantom.parent), init_ckpt=str(tmp_path / "stage1.pt")) == (
        f"init_ckpt {tmp_path / 'stage1.pt'}: file not found.")


def test_malicious_checkpoints_are_refused_in_one_line(tiny_phantom, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, evil)
    refused = "refused: it holds pickled code or objects (GLOBAL posix.mkdir), not only weights; only tensors and plain containers " \
              "are loaded, so nothing in the file was run."
    data = str(tiny_phantom.parent)
    assert _refused(tmp_path, dataset_dir=data, init_ckpt=str(evil)) == f"{evil}: {refused}"
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")  # weights of another network
    assert _refused(tmp_path, dataset_dir=data, init_ckpt=str(tmp_path / "linear.pt")).startswith(
        f"{tmp_path / 'linear.pt'}: weights of another network, not of this model (")
    assert _refused(tmp_path, dataset_dir=data, policy_name="rl", policy_model_path=str(evil)) == f"{evil}: {refused}"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:  # an SB3 archive whose weights entry carries the payload
        z.writestr("policy.pth", evil.read_bytes())
    assert _refused(tmp_path, dataset_dir=data, policy_name="rl", policy_model_path=str(tmp_path / "evil.zip")).startswith(
        f"{tmp_path / 'evil.zip'}: not usable as SB3 policy weights: ")
    models = tmp_path / "resume" / "models"
    models.mkdir(parents=True)
    (models / "checkpoint_epoch=1.pt").write_bytes(evil.read_bytes())  # a complete zip: taken as the newest checkpoint
    assert _refused(tmp_path, dataset_dir=data, output_dir=str(tmp_path / "resume"), resume=True) == f"{models / 'checkpoint_epoch=1.pt'}: {refused}"
    assert not marker.exists()


def test_resume_skips_a_truncated_newest_checkpoint_and_keeps_only_n_saved(tiny_phantom, tmp_path, capsys):
    out = tmp_path / "out"
    shared = {"dataset_dir": str(tiny_phantom.parent), "output_dir": str(out), **TINY}
    run_bundle(CLS, ["train.yaml"], **shared)
    models = out / "models"
    whole = (models / "checkpoint_epoch=1.pt").read_bytes()
    (models / "checkpoint_epoch=2.pt").write_bytes(whole[: len(whole) // 2])  # newest, and cut short (a full disk, a copy)
    capsys.readouterr()
    run_bundle(CLS, ["train.yaml"], **{**shared, "max_epochs": 3, "resume": True})
    log = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
    assert f"{models / 'checkpoint_epoch=2.pt'}: truncated or not a checkpoint" in log
    assert "resuming from the newest complete checkpoint before it" in log
    history = json.loads((out / "val_report.json").read_text())["ratio_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # resumed after epoch 1, trained 2 and 3
    # n_saved is 1: the checkpoint from before the resume is gone too, not only the ones this process saved
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
