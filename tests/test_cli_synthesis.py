from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_ldm
from monai.networks.nets import ResNet

from monai_breastlt.cli.main import main
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
