"""Pretrained phase-1 models: those shipped with the package, how they are made (`export-models`) and used (`demo`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_PERCEPTION, stats_handler_records

from monai_breastlt.bench.synthesis import benchmark_synthesis
from monai_breastlt.cli.main import main
from monai_breastlt.data import generate_phantom
from monai_breastlt.pretrained import load_pretrained, phantom_models_dir, read_pretrained
from monai_breastlt.utils import read_json, torch_load_safe
from monai_breastlt.workflows import default_bundles_dir, pretrained_overrides, run_bundle

SYN = default_bundles_dir() / "breastlt_synthesis"
PER_CLASS = 48  # images per generated subtype: a fidelity of 25 % (the weakest subtype's in the benchmark) stays above chance


def test_shipped_models_load_and_the_judge_recognises_their_images(tmp_path):
    """The package's models generate, through the synthesis bundle, images of every subtype the demo's pool asks for
    (all but the head subtype, which the pool fills up to) that the shipped judge assigns to their subtype more often
    than chance."""
    models = phantom_models_dir()
    loaded = load_pretrained(models)  # the manifest, every file's SHA-256, weights-only loads, the architectures
    manifest = loaded["manifest"]
    size, n = manifest["image_size"], len(manifest["classes"])
    x = torch.rand(2, 1, size, size)
    assert loaded["judge"](x).shape == (2, n) and loaded["perception"].predict_sketch(x).shape == (2, 1, size, size)
    data = tmp_path / "data"  # sketches from a phantom the models never saw
    generate_phantom(data, image_size=size, seed=manifest["data_seed"] + 1, counts=[6] * n)
    common = {"dataset_dir": str(data), "output_dir": str(tmp_path / "syn"), "batch_size": 16, "seed": 0, **pretrained_overrides(models)}
    run_bundle(SYN, ["common.yaml", "inference.yaml"], workflow_type="infer", verbose=False,
               target_mode=[0] + [PER_CLASS] * (n - 1), **manifest["sampling"], **common)
    run_bundle(SYN, ["common.yaml", "audit.yaml"], workflow_type="infer", verbose=False, classifier_ckpt=str(models / "judge.pt"),
               use_autoencoder=False, **common)
    per_class = read_json(data / "pool" / "audit" / "audit_report.json")["per_class"]
    fidelity = {c: v["fidelity"] for c, v in per_class.items() if v.get("n")}
    assert len(fidelity) == n - 1 and all(per_class[c]["n"] == PER_CLASS for c in fidelity)
    assert all(f > 1 / n for f in fidelity.values()), fidelity


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished `bench synthesis --profile tiny` run, and its models exported with `export-models`."""
    run = tmp_path_factory.mktemp("run")
    benchmark_synthesis(run, "tiny", log=lambda m: None)
    dest = run / "exported"
    assert main(["export-models", str(run), "--dest", str(dest)]) == 0
    return run, dest


def test_export_models_keeps_the_weights_only_in_half_precision(tiny_run):
    run, dest = tiny_run
    manifest = read_pretrained(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["judge.pt", "ldm.pt", "perception.pt", "pretrained.json"]
    assert manifest["image_size"] == 32 and manifest["perception_features"] == list(TINY_PERCEPTION["features"])
    assert manifest["data_seed"] == 0 and manifest["sampling"] == {"sampler": "ddpm", "num_inference_steps": 2, "guidance_scale": 2.0}
    assert manifest["made_by"]["command"].startswith("python -m monai_breastlt bench synthesis --profile tiny --seed 0")
    assert manifest["figures"]["judge_macro_fidelity"] == read_json(run / "synthesis_benchmark.json")["macro_fidelity_judges"][0]
    pairs = {"ldm.pt": run / "synthesis/models/ldm.pt", "perception.pt": run / "synthesis/models/perception.pt",
             "judge.pt": run / "classifier/models/model.pt"}
    for name, source in pairs.items():
        src, out = torch_load_safe(source), torch_load_safe(dest / name)
        assert out.keys() == src.keys(), name  # the network's own state: no optimizer, no engine state
        for k, v in src.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0:
                assert out[k].dtype == torch.float16 and torch.allclose(out[k].float(), v, rtol=1e-3, atol=1e-4), (name, k)
            elif isinstance(v, torch.Tensor):
                assert torch.equal(out[k], v), (name, k)  # scalars (the latent scale factor) and integer buffers as they were
        assert (dest / name).stat().st_size < source.stat().st_size
    loaded = load_pretrained(dest)
    assert float(loaded["ldm"].scale_factor) == float(torch_load_safe(pairs["ldm.pt"])["scale_factor"])
    assert next(loaded["judge"].parameters()).dtype == torch.float32  # loading casts the weights back


def test_export_models_refuses_to_overwrite_and_replaces_the_whole_folder(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    dest = tmp_path / "models"
    assert main(["export-models", str(run), "--dest", str(dest)]) == 0
    assert main(["export-models", str(run), "--dest", str(dest)]) == 2
    assert "holds pretrained models already; pass --replace" in capsys.readouterr().err
    (dest / "stale.pt").write_bytes(b"x")
    assert main(["export-models", str(run), "--dest", str(dest), "--replace"]) == 0
    assert not (dest / "stale.pt").exists() and read_pretrained(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no temporary folder left behind


def test_export_models_refuses_a_run_on_other_data(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    copy = tmp_path / "run"
    for rel in ("synthesis/models/ldm.pt", "synthesis/models/perception.pt", "classifier/models/model.pt", "data/datalist.json"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / rel, copy / rel)
    report = read_json(run / "synthesis_benchmark.json")
    report["settings"]["source"] = "/data/busbra"
    (copy / "synthesis_benchmark.json").write_text(json.dumps(report))
    assert main(["export-models", str(copy), "--dest", str(tmp_path / "m")]) == 2
    assert "made on /data/busbra; the shipped models are for the built-in phantom" in capsys.readouterr().err
    assert main(["export-models", str(tmp_path / "nothing"), "--dest", str(tmp_path / "m")]) == 2
    assert "synthesis_benchmark.json: file not found" in capsys.readouterr().err


def test_a_models_folder_is_checked_before_use(tiny_run, tmp_path):
    _, dest = tiny_run
    copy = tmp_path / "m"
    shutil.copytree(dest, copy)
    with open(copy / "judge.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"judge.pt: its content differs from the one .*pretrained.json recorded"):
        read_pretrained(copy)
    (copy / "pretrained.json").unlink()
    with pytest.raises(FileNotFoundError, match="no pretrained models here.*export-models RUN"):
        read_pretrained(copy)


def test_demo_with_pretrained_models_is_quiet_and_writes_a_summary(tiny_run, tmp_path, capsys):
    _, dest = tiny_run
    out = tmp_path / "demo"
    with stats_handler_records() as records:
        assert main(["demo", "--fast", "--models", str(dest), "--out", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "pool, from the pretrained models in" in text and "judged by the judge shipped with the models" in text
    assert records == [] and "Iter:" not in text and "Epoch[" not in text  # no per-iteration or per-epoch log
    assert not (out / "synthesis" / "models").exists()  # phase 1 was not trained
    pool = read_json(out / "data/pool/pool.json")["training"]
    counts = [sum(e["label"] == c for e in pool) for c in range(6)]
    assert counts[0] == 0 and min(counts[1:]) > 0  # the rarer subtypes filled up to the head
    summary = (out / "summary.md").read_text()
    assert "| rl_sampler |" in summary and "| plain_ce |" in summary and "![summary](summary.png)" in summary
    assert "made by `python -m monai_breastlt bench synthesis --profile tiny --seed 0 --out RUN`" in summary
    assert f"Synthetic pool: {len(pool)} images" in summary and (out / "summary.png").stat().st_size > 10_000


def test_demo_refuses_bad_model_choices_before_any_work(tiny_run, tmp_path, capsys):
    _, dest = tiny_run
    out = tmp_path / "demo"
    assert main(["demo", "--models", str(dest), "--data-seed", "0", "--out", str(out)]) == 2
    assert "--data-seed 0: the pretrained models in" in capsys.readouterr().err
    assert main(["demo", "--models", str(dest), "--train-synthesis", "--out", str(out)]) == 2
    assert "pass one or the other" in capsys.readouterr().err
    assert main(["demo", "--models", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no pretrained models here" in capsys.readouterr().err
    assert not out.exists()


def test_generate_and_audit_take_a_pretrained_models_folder(tiny_run, tiny_phantom, tmp_path, capsys):
    _, dest = tiny_run
    pool = tmp_path / "pool"
    assert main(["generate", str(tiny_phantom.parent), "--models", str(dest), "--pool", str(pool), "--target-mode", "each",
                 "--target-n", "1", "--steps", "2"]) == 0
    assert len(read_json(pool / "pool.json")["training"]) == 6  # the manifest's perception features and image size fit
    assert main(["audit", str(pool), "--real", str(tiny_phantom), "--classifier", str(dest / "judge.pt"), "--models", str(dest),
                 "--out", str(tmp_path / "audit")]) == 0
    assert read_json(tmp_path / "audit" / "audit_report.json")["overall"]["n"] == 6
    assert "audit of 6 images" in capsys.readouterr().out
