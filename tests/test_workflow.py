from __future__ import annotations

import pytest

from monai_breastlt import workflows as workflow
from monai_breastlt.workflows import check_overrides, default_bundles_dir, find_bundles, run_bundle, train_synthesis
from monai_breastlt.handlers import mlflow_tracking_settings

CLS = default_bundles_dir() / "breastlt_classification"


def test_config_typos_are_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) for train.yaml: 'max_epoch' \(did you mean 'max_epochs'\?\)"):
        run_bundle(CLS, ["train.yaml"], max_epoch=3, dataset_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'network_def#num_clases'"):
        check_overrides([str(CLS / "configs" / "train.yaml")], {"network_def#num_clases": 3})
    # nested ids, keys of a second config file and tracking settings are known
    files = [str(CLS / "configs" / c) for c in ("train.yaml", "evaluate.yaml")]
    check_overrides(files, {"network_def#layers": [1, 1, 1, 1], "posthoc_tau": 1.0})
    check_overrides(files[:1], {"run_name": "x"}, list(mlflow_tracking_settings()["configs"]))


def test_missing_bundles_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle not found; pass --bundles"):
        find_bundles(tmp_path)


def test_train_synthesis_resumes_inside_the_unfinished_stage(tmp_path, monkeypatch):
    """Finished stages are skipped; the unfinished one is asked to continue from its own resume checkpoint."""
    calls = []
    monkeypatch.setattr(workflow, "run_bundle", lambda bundle, configs, workflow_type, **kw: calls.append((configs[-1], kw)))
    (tmp_path / "stages.json").write_text('{"autoencoder": 5.0, "perception": 1.0}')  # killed during the UNet stage
    epochs = {"autoencoder": 1, "perception": 1, "unet": 3, "controlnet": 2}
    done = train_synthesis(tmp_path, {"output_dir": str(tmp_path)}, epochs, generate={"num_inference_steps": 2}, log=lambda m: None)
    assert [c for c, _ in calls] == ["train_diffusion.yaml", "train_diffusion.yaml", "inference.yaml"]
    assert [kw.get("resume") for _, kw in calls] == [True, True, None]  # generation resumes by its own manifest
    assert calls[1][1]["use_controlnet"] and calls[0][1]["max_epochs"] == 3 and done["autoencoder"] == 5.0


def test_command_line_overrides_and_settings_are_read_as_monai_reads_them(tmp_path):
    from monai_breastlt.workflows import check_settings, command_line_overrides

    argv = ["run", "--config_file", "['a.yaml','b.yaml']", "--max_epoch=3", "--tracking", "mlflow", "--dataset_dir", "d", "--fast"]
    assert command_line_overrides(argv) == (["a.yaml", "b.yaml"], ["config_file", "max_epoch", "tracking", "dataset_dir", "fast"])
    assert command_line_overrides(["verify_metadata", "--meta_file", "m.json"]) is None
    assert command_line_overrides() is None  # pytest is not `python -m monai.bundle`
    check_settings({"batch_size": 4, "policy_name": "rl", "unchecked": -1, "seed": None})
    with pytest.raises(ValueError, match=r"--batch-size must be an integer >= 1, got 0\."):
        check_settings({"batch_size": 0}, {"batch_size": "--batch-size"})


def test_leakage_is_warned_when_training_starts(tiny_phantom, tmp_path, capsys):
    from monai_breastlt.data import load_datalist_file, write_datalist

    doc = load_datalist_file(tiny_phantom)
    leaked = {**doc["training"][0], "group": doc["validation"][0]["group"]}  # a patient of the validation split
    write_datalist(tmp_path / "data" / "datalist.json", {"training": [leaked, *doc["training"][1:]], "validation": doc["validation"],
                                                         "test": doc["test"]}, doc["classes"])
    run_bundle(CLS, ["train.yaml"], dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), max_epochs=1, image_size=32,
               batch_size=8, policy_name="none")
    log = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
    assert f"{tmp_path / 'data' / 'datalist.json'}: split leakage: 1 patient(s) ('group') in more than one split, e.g. " \
           f"'{leaked['group']}' in training and validation" in log
