"""Both bundles under MONAI's own bundle tools: verify_metadata offline, verify_net_in_out for every network,
ConfigWorkflow.check_properties, ckpt_export and verification without a dataset, monai.bundle.load, and inference on
a folder of unlabelled images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import monai_bundle_cli, tiny_ldm
from monai.bundle import ConfigParser, ConfigWorkflow, load, verify_metadata, verify_net_in_out

from monai_breastlt.networks import SketchPerceptionNet
from monai_breastlt.workflows import CLASSES_FILE, TINY_NETS, bundle_class_names, default_bundles_dir, run_bundle

BUNDLES = default_bundles_dir()
CLS, SYN = BUNDLES / "breastlt_classification", BUNDLES / "breastlt_synthesis"
SCHEMA = BUNDLES / "metadata_schema.json"
IO = "_meta_#network_data_format#"


def _cfg(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / n) for n in names]


@pytest.fixture(scope="module")
def trained_cls(tiny_phantom, tmp_path_factory) -> Path:
    """One epoch of the classification bundle on the tiny phantom (plain cross-entropy): its output folder."""
    out = tmp_path_factory.mktemp("cls")
    run_bundle(CLS, ["train.yaml"], dataset_dir=str(tiny_phantom.parent), output_dir=str(out), max_epochs=1, image_size=32,
               batch_size=8, policy_name="none", sampler_target="real", pool=str(out / "no_pool.json"))
    return out


def test_metadata_verifies_offline_against_the_shipped_schema(tmp_path):
    proc = monai_bundle_cli("verify_metadata", "--meta_file", CLS / "configs/metadata.json", "--filepath", SCHEMA, cwd=tmp_path)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    for bundle in (CLS, SYN):
        meta = bundle / "configs" / "metadata.json"
        verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))  # what the command above runs
        doc = json.loads(meta.read_text())
        # MONAI 1.6 reads the older name as required_packages_version: both hold the same packages, so nothing is lost
        assert doc["optional_packages_version"] == doc["required_packages_version"]
        parser = ConfigParser()
        parser.read_meta(str(meta))
        assert parser["_meta_#required_packages_version"] == doc["required_packages_version"]
        # the schema can fail: without a key the specification makes mandatory, verification stops
        doc.pop("optional_packages_version")
        (tmp_path / "meta.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="optional_packages_version"):
            verify_metadata(meta_file=str(tmp_path / "meta.json"), filepath=str(SCHEMA))


def test_every_network_passes_verify_net_in_out(trained_cls, tmp_path):
    # the synthesis bundle's denoiser (UNet, class embedding): timesteps and labels as MONAI passes extra forward args
    monai_bundle_cli("verify_net_in_out", "network_def", "--meta_file", SYN / "configs/metadata.json", "--config_file",
                     SYN / "configs/common.yaml", "--num_classes", "6", "--extra_forward_args", "{'timesteps': [500], 'class_labels': [0]}",
                     cwd=tmp_path)
    # the classifier of a trained run (what `verify_net_in_out network_def ... --ckpt_dir OUT/models` runs): its class
    # names come from <ckpt_dir>/classes.json, no dataset is given
    verify_net_in_out(net_id="network_def", meta_file=str(CLS / "configs/metadata.json"), config_file=_cfg(CLS, "train.yaml"),
                      device="cpu", ckpt_dir=str(trained_cls / "models"))
    # the perception net and the audit's classifier: the same tool, with MONAI's overrides of the input/output format
    image = {f"{IO}inputs#image#num_channels": 1, f"{IO}inputs#image#spatial_shape": [64, 64]}
    verify_net_in_out(net_id="perception_def", meta_file=str(SYN / "configs/metadata.json"), config_file=_cfg(SYN, "common.yaml"),
                      device="cpu", **image, **{f"{IO}outputs#pred#num_channels": 2})
    verify_net_in_out(net_id="classifier_def", meta_file=str(SYN / "configs/metadata.json"), config_file=_cfg(SYN, "common.yaml", "audit.yaml"),
                      device="cpu", num_classes=6, **image, **{f"{IO}outputs#pred#num_channels": 6})
    # a wrong output format is caught: the check can fail
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="perception_def", meta_file=str(SYN / "configs/metadata.json"), config_file=_cfg(SYN, "common.yaml"),
                          device="cpu", **image, **{f"{IO}outputs#pred#num_channels": 3})
    # the ControlNet path, which needs a sketch tensor the tool cannot pass: the same forward, one value per batch or per item
    model = tiny_ldm(6)
    latents = torch.rand(2, 2, 16, 16)
    with torch.no_grad():
        out = model(latents, [10], torch.tensor([0, 6]), sketch=torch.rand(2, 1, 32, 32))
    assert out.shape == latents.shape
    with pytest.raises(ValueError, match="timesteps must hold 1 or 2 values"):
        model(latents, [1, 2, 3], 0)


def _check(bundle: Path, configs: list[str], kind: str, **overrides) -> None:
    wf = ConfigWorkflow(config_file=_cfg(bundle, *configs), meta_file=str(bundle / "configs/metadata.json"), workflow_type=kind, **overrides)
    wf.initialize()
    assert wf.check_properties() == [], (configs, kind)


def test_check_properties_of_training_and_inference_in_both_bundles(tiny_phantom, trained_cls, tmp_path):
    data = {"dataset_dir": str(tiny_phantom.parent), "image_size": 32}
    _check(CLS, ["train.yaml"], "train", output_dir=str(tmp_path / "cls"), **data)
    _check(CLS, ["train.yaml", "evaluate.yaml"], "infer", output_dir=str(trained_cls), **data)
    _check(CLS, ["train.yaml", "inference.yaml"], "infer", output_dir=str(trained_cls), **data)
    syn = {"output_dir": str(tmp_path / "syn"), **data, **TINY_NETS}
    for stage in ("train_autoencoder.yaml", "train_perception.yaml", "train_diffusion.yaml"):
        _check(SYN, ["common.yaml", stage], "train", **syn)
    models = tmp_path / "syn" / "models"  # generation loads trained weights: untrained tiny ones stand in
    torch.save(tiny_ldm(6).state_dict(), models / "ldm.pt")
    torch.save(SketchPerceptionNet(features=TINY_NETS["perception_def#features"]).state_dict(), models / "perception.pt")
    _check(SYN, ["common.yaml", "inference.yaml"], "infer", **syn)


def test_export_and_load_without_the_dataset(tiny_phantom, trained_cls, tmp_path):
    models = trained_cls / "models"
    classes = json.loads(tiny_phantom.read_text())["classes"]
    assert json.loads((models / CLASSES_FILE).read_text()) == classes  # written by training, next to the model
    monai_bundle_cli("ckpt_export", "network_def", "--filepath", tmp_path / "model.ts", "--ckpt_file", models / "model.pt",
                     "--meta_file", CLS / "configs/metadata.json", "--config_file", CLS / "configs/train.yaml",
                     "--ckpt_dir", models, "--input_shape", "[1,1,32,32]", cwd=tmp_path)
    assert torch.jit.load(str(tmp_path / "model.ts"))(torch.rand(1, 1, 32, 32)).shape == (1, len(classes))
    # monai.bundle.load from the local bundle (docs/bundles.md): the network from the bundle's config, the run's weights
    parser = ConfigParser()
    parser.read_config(_cfg(CLS, "train.yaml"))
    parser["ckpt_dir"] = str(models)
    net = load(name=CLS.name, bundle_dir=str(CLS.parent), model_file=str(models / "model.pt"),
               model=parser.get_parsed_content("network_def"), device="cpu")
    saved = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    # a datalist whose classes are not the model's is refused, naming both
    other = tmp_path / "datalist.json"
    other.write_text(json.dumps({"classes": ["benign", "malignant"], "test": [{"image": "a.png", "label": 1}]}))
    with pytest.raises(ValueError, match=r"classes.json: the models in .* were trained on classes"):
        bundle_class_names(other, models)
    with pytest.raises(FileNotFoundError, match="pass --dataset_dir"):
        bundle_class_names(tmp_path / "none.json", tmp_path)


def test_inference_on_a_folder_of_unlabelled_images(tiny_phantom, trained_cls, tmp_path):
    images = tmp_path / "new scans"
    (images / "sub").mkdir(parents=True)
    test = json.loads(tiny_phantom.read_text())["test"][:3]
    copies = [shutil.copy(tiny_phantom.parent / t["image"], images / ("sub" if i else "") / f"scan{i}.png") for i, t in enumerate(test)]
    shutil.copy(copies[0], images / "scan0_mask.png")  # masks are not scans
    out = tmp_path / "predictions"
    monai_bundle_cli("run", "--bundle_root", CLS, "--config_file", str(_cfg(CLS, "train.yaml", "inference.yaml")),
                     "--dataset_dir", images, "--ckpt_dir", trained_cls / "models", "--output_dir", out, "--image_size", "32", cwd=tmp_path)
    with open(out / "predictions.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["filename", *json.loads(tiny_phantom.read_text())["classes"]]
    assert sorted(r[0] for r in rows) == sorted(str(c) for c in copies)
    assert all(abs(sum(float(v) for v in r[1:]) - 1) < 1e-4 for r in rows)  # class probabilities
    # the labelled test split: evaluate.yaml on the same run
    run_bundle(CLS, ["train.yaml", "evaluate.yaml"], workflow_type="infer", dataset_dir=str(tiny_phantom.parent), output_dir=str(trained_cls),
               image_size=32, batch_size=8)
    assert 0 <= json.loads((trained_cls / "test_report.json").read_text())["macro_f1"] <= 1


def test_handlers_named_by_position_point_at_the_right_handlers():
    """``adaptive_handler`` and ``val_history`` (classification) and the EMA handler (synthesis) are list entries named by
    position: a handler inserted before them would make the resume checkpoints save the wrong objects."""
    from monai.bundle import ConfigParser

    from monai_breastlt.workflows import default_bundles_dir

    expected = {("breastlt_classification", "train.yaml"): {"adaptive_handler": "AdaptiveSamplerHandler", "val_history": "ValidationHistory"},
                ("breastlt_synthesis", "train_diffusion.yaml"): {"ema": "ExponentialMovingAverage"}}
    for (bundle, name), refs in expected.items():
        parser = ConfigParser()
        parser.read_config(str(default_bundles_dir() / bundle / "configs" / name))
        for key, cls in refs.items():
            target = parser.get(parser.get(key).lstrip("@"))["_target_"]
            assert target.endswith(cls), (key, target)
