from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import tiny_ldm
from monai.networks.nets import ResNet
from PIL import Image

from monai_breastlt.cli.main import main
from monai_breastlt.data import load_datalist_file, write_datalist
from monai_breastlt.networks import SketchPerceptionNet


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Untrained phase-1 models in a models/ folder as the synthesis bundle writes it, and a real-data classifier as
    the audit's classifier_def builds it (the commands' plumbing is under test, not the models' quality)."""
    out = tmp_path_factory.mktemp("models")
    torch.save(tiny_ldm(6).state_dict(), out / "ldm.pt")  # its architecture travels in the state dict
    torch.manual_seed(0)
    torch.save(SketchPerceptionNet().state_dict(), out / "perception.pt")
    clf = ResNet("basic", [1, 1, 1, 1], [32, 64, 128, 256], spatial_dims=2, n_input_channels=1, num_classes=6)
    torch.save(clf.state_dict(), out / "classifier.pt")
    return out


def test_generate_then_audit(tiny_phantom, models, tmp_path, capsys):
    data, pool = str(tiny_phantom.parent), tmp_path / "pool"
    gen = ["generate", data, "--models", str(models), "--pool", str(pool), "--target-mode", "each", "--target-n", "2",
           "--steps", "2", "--sampler", "ddpm", "--image-size", "32", "--seed", "3"]
    assert main(gen) == 0
    assert "pool: 12 images" in capsys.readouterr().out
    doc = json.loads((pool / "pool.json").read_text())
    assert len(doc["training"]) == 12 and doc["generator"]["sampler"] == "ddpm" and doc["generator"]["seed"] == 3
    assert main(gen) == 0  # resumed: nothing missing, nothing added
    assert len(json.loads((pool / "pool.json").read_text())["training"]) == 12
    assert main(gen[:-2] + ["--seed", "4"]) == 2  # another seed would mix two pools
    assert "seed 3 -> 4" in capsys.readouterr().err
    other = tmp_path / "cross"
    assert main(gen[:5] + [str(other)] + gen[6:] + ["--cross-class-sketches"]) == 0
    cross = json.loads((other / "pool.json").read_text())
    assert cross["generator"]["cross_class_sketches"] is True
    # sketches of another class's images: some image's sketch source lies in another class's folder
    assert any(f"/{e['class_name']}/" not in e["sketch_from"] for e in cross["training"])

    audit = ["audit", str(pool), "--real", data, "--classifier", str(models / "classifier.pt"), "--models", str(models),
             "--image-size", "32", "--filter", "--min-class-prob", "0.0"]
    assert main(audit) == 0
    out = capsys.readouterr().out
    assert "audit of 12 images" in out and "filtered pool:" in out
    report = json.loads((pool / "audit" / "audit_report.json").read_text())
    assert report["overall"]["n"] == 12 and len(report["images"]) == 12
    assert "reconstruction_balanced_accuracy" in report["overall"]  # the autoencoder of ldm.pt was used
    kept = json.loads((pool / "pool_filtered.json").read_text())["training"]
    assert len(kept) == 12 - sum(i["near_copy"] or i["lesion_near_copy"] for i in report["images"])


def test_bad_input_names_the_file(tiny_phantom, models, tmp_path, capsys):
    data = str(tiny_phantom.parent)
    assert main(["generate", data, "--models", str(tmp_path), "--image-size", "32"]) == 2
    assert f"{tmp_path / 'ldm.pt'}: checkpoint not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--models", str(models)]) == 2
    assert "datalist.json: no datalist" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "nopool"), "--real", data, "--classifier", "c.pt", "--models", str(models)]) == 2
    assert "nopool: pool manifest not found" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(1)}, tmp_path / "ldm.pt")
    assert main(["generate", data, "--models", str(tmp_path)]) == 2
    assert "not saved from a SketchConditionedLDM" in capsys.readouterr().err


def _error(capsys, argv):
    """The one ``error:`` line of a command that must exit with code 2."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--steps", "0"], "--steps must be an integer >= 1, got 0."),
        (["--guidance-scale", "nan"], "--guidance-scale must be a finite number >= 0, got nan."),
        (["--guidance-scale", "-1"], "--guidance-scale must be a finite number >= 0, got -1.0."),
        (["--conditioning-scale", "inf"], "--conditioning-scale must be a finite number >= 0, got inf."),
        (["--perturb", "1.5"], "--perturb must be a finite number >= 0 and <= 1, got 1.5."),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0."),
        (["--target-n", "-2", "--target-mode", "each"], "--target-n must be an integer >= 0, got -2."),
        (["--image-size", "0"], "--image-size must be an integer >= 1, got 0."),
        (["--seed", "-1"], "--seed must be an integer >= 0 and <= 4294967295, got -1."),
    ],
)
def test_generate_refuses_numeric_options_out_of_range(tiny_phantom, models, tmp_path, capsys, option, message):
    pool = tmp_path / "pool"
    assert _error(capsys, ["generate", str(tiny_phantom.parent), "--models", str(models), "--pool", str(pool), *option]) == f"error: {message}"
    assert not pool.exists()  # nothing written


def test_generate_uses_the_models_image_size_and_refuses_another(tiny_phantom, models, tmp_path, capsys):
    sized = tmp_path / "models32"
    sized.mkdir()
    model = tiny_ldm(6)
    model.image_size = [32, 32]  # as the diffusion trainer records it
    torch.save(model.state_dict(), sized / "ldm.pt")
    (sized / "perception.pt").write_bytes((models / "perception.pt").read_bytes())
    data, pool = str(tiny_phantom.parent), tmp_path / "pool"
    line = _error(capsys, ["generate", data, "--models", str(sized), "--pool", str(pool), "--image-size", "64"])
    assert line == (f"error: --image-size 64: {sized / 'ldm.pt'} was trained on 32x32 images; leave --image-size out (it is read from "
                    "the checkpoint) or pass 32.")
    assert main(["generate", data, "--models", str(sized), "--pool", str(pool), "--target-mode", "each", "--target-n", "1", "--steps", "1"]) == 0
    first = load_datalist_file(pool / "pool.json")["training"][0]["image"]
    assert Image.open(first).size == (32, 32)  # the bundle's default is 64: the size came from ldm.pt


def test_generate_names_unusable_model_and_pool_files(tiny_phantom, models, tmp_path, capsys):
    data = str(tiny_phantom.parent)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ldm.pt").write_bytes(os.urandom(4096))
    assert _error(capsys, ["generate", data, "--models", str(bad)]) == (
        f"error: {bad / 'ldm.pt'}: not a PyTorch checkpoint, or a truncated one (no complete zip archive); save it again or pick another file.")
    (bad / "ldm.pt").write_bytes((models / "ldm.pt").read_bytes())
    (bad / "perception.pt").write_bytes((models / "classifier.pt").read_bytes())  # another network's weights
    line = _error(capsys, ["generate", data, "--models", str(bad), "--image-size", "32"])
    assert line.startswith(f"error: {bad / 'perception.pt'}: weights of another network, not of this SketchPerceptionNet (")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "pool.json").write_text('{"classes": ["fibroadenoma", "invasive_ductal_carcinoma"], "training": [{"ima')
    line = _error(capsys, ["generate", data, "--models", str(models), "--pool", str(pool), "--image-size", "32", "--steps", "1"])
    assert line.startswith(f"error: {pool / 'pool.json'}: not valid JSON (")


def test_audit_names_missing_pool_images_a_wrong_classifier_and_another_class_order(tiny_phantom, models, tmp_path, capsys):
    data = str(tiny_phantom.parent)
    doc = json.loads(tiny_phantom.read_text())
    real = [i for i in load_datalist_file(tiny_phantom)["training"]]
    entries = [{"image": str(tmp_path / "pool" / f"gone_{k}.png"), "label": i["label"]} for k, i in enumerate(real[:3])]
    write_datalist(tmp_path / "pool" / "pool.json", {"training": entries}, doc["classes"])
    audit = ["audit", str(tmp_path / "pool"), "--real", data, "--classifier", str(models / "classifier.pt"), "--models", str(models),
             "--image-size", "32"]
    line = _error(capsys, audit)
    assert line.startswith(f"error: {tiny_phantom}: 3 unusable image file(s) among "), line
    assert all(f"pool {tmp_path / 'pool' / 'pool.json'} entry {k} image {e['image']}: file not found" in line for k, e in enumerate(entries)), line
    write_datalist(tmp_path / "pool" / "pool.json", {"training": [{"image": i["image"], "label": i["label"]} for i in real[:3]]}, doc["classes"])
    line = _error(capsys, audit[:5] + [str(models / "perception.pt")] + audit[6:])
    assert line.startswith(f"error: {models / 'perception.pt'}: weights of another network, not of this ResNet (")
    write_datalist(tmp_path / "pool" / "pool.json", {"training": [{"image": i["image"], "label": i["label"]} for i in real[:3]]},
                   doc["classes"][::-1])
    line = _error(capsys, audit)
    assert line.startswith(f"error: {tmp_path / 'pool' / 'pool.json'}: pool classes {doc['classes'][::-1]} differ from ")
    assert line.endswith("(same names, another order: its labels would mean other classes).")
