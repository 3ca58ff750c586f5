from __future__ import annotations

import json

from mlflow import MlflowClient

from monai_breastlt.workflows import default_bundles_dir, run_bundle
from monai_breastlt.handlers import mlflow_tracking_settings
from monai_breastlt.handlers.tracking import executed_config_path

CLS = default_bundles_dir() / "breastlt_classification"


def test_shipped_settings_files_match_the_function():
    for bundle in ("breastlt_classification", "breastlt_synthesis"):
        shipped = json.loads((default_bundles_dir() / bundle / "configs" / "mlflow_tracking.json").read_text())
        assert shipped == mlflow_tracking_settings()


def test_broken_store_warns_and_training_finishes(tiny_phantom, tmp_path, capsys):
    store = tmp_path / "mlruns.db"
    store.write_bytes(b"this is not an sqlite database" * 100)  # e.g. a store clobbered by another tool
    out = tmp_path / "cls"
    run_bundle(CLS, ["train.yaml"], tracking=mlflow_tracking_settings(), tracking_uri=f"sqlite:///{store}",
               dataset_dir=str(tiny_phantom.parent), output_dir=str(out), max_epochs=2, image_size=32, batch_size=8,
               policy_name="heuristic")
    text = capsys.readouterr().out
    assert "training continues without MLflow" in text
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "checkpoint_epoch=2.pt").is_file()
    rows = [json.loads(line) for line in (out / "mlflow_fallback_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "train_loss" in r["metrics"] or "long_tail" in r["metrics"]][-1] == 2
    assert any("ratio/cyst" in r["metrics"] for r in rows)


def test_working_store_logs_as_usual(tiny_phantom, tmp_path, capsys):
    out = tmp_path / "cls"
    run_bundle(CLS, ["train.yaml"], tracking=mlflow_tracking_settings(), dataset_dir=str(tiny_phantom.parent),
               output_dir=str(out), max_epochs=1, image_size=32, batch_size=8, policy_name="none", run_name="ok")
    client = MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == ["ok"] and "train_loss" in runs[0].data.metrics
    assert not (out / "mlflow_fallback_metrics.jsonl").exists()
    assert "without MLflow" not in capsys.readouterr().out  # every event handler, the final one included, worked
    # the executed config MONAI's tracking patch writes, logged although output_dir is a plain path (no expression)
    logged = [a.path for a in client.list_artifacts(runs[0].info.run_id) if a.path.startswith("config_")]
    assert len(logged) == 1 and logged[0].endswith(".json") and (out / logged[0]).is_file()


def test_executed_config_path_reads_both_forms_of_output_dir(tmp_path):
    # MONAI resolves `<output_dir> + '/config_<time>.json'` to a literal string when output_dir is a plain path
    assert executed_config_path("runs/cls + '/config_20240101_120000.json'") == "runs/cls/config_20240101_120000.json"
    assert executed_config_path(str(tmp_path / "outputs/config_1.json")) == str(tmp_path / "outputs/config_1.json")  # an expression's result


def test_monai_default_tracking_logs_the_executed_config_with_a_plain_output_dir(tiny_phantom, tmp_path):
    # `--tracking mlflow` (MONAI's own settings) loses the path of the executed config it writes when output_dir is a
    # plain path; the report handler logs the newest config_*.json of output_dir instead
    out = tmp_path / "cls"
    run_bundle(CLS, ["train.yaml"], tracking="mlflow", tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
               dataset_dir=str(tiny_phantom.parent), output_dir=str(out), max_epochs=1, image_size=32, batch_size=8,
               policy_name="none")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = [a.path for r in runs for a in client.list_artifacts(r.info.run_id) if a.path.startswith("config_")]
    assert len(logged) == 1 and (out / logged[0]).is_file()
