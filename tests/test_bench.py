from __future__ import annotations

from conftest import TINY_LDM

from monai_breastlt.bench.speed import bench_sampler
from monai_breastlt.cli.main import main


def test_bench_sampler_rows(capsys):
    rows = bench_sampler([2000], num_classes=5, repeats=1)
    assert rows[0]["items"] == 2000 and rows[0]["epoch_samples"] > 0 and rows[0]["ratio"] > 0
    assert main(["bench", "speed", "--parts", "sampler", "--sizes", "1000"]) == 0
    assert "| 1000 |" in capsys.readouterr().out


def test_training_and_sampling_speed_rows():
    from monai_breastlt.bench.speed import bench_sampling, bench_training

    rows = bench_training(n_items=64, epochs=1, image_size=16, batch_size=16)
    assert [r["pipeline"] for r in rows] == ["MONAI + RandomSampler", "adaptive sampler + RL handler"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0 and all(r["peak_rss_mb"] > 0 for r in rows)
    rows = bench_sampling([("ddim", 2)], batch=1, image_size=16, ldm_kwargs=TINY_LDM)
    assert [r["impl"] for r in rows] == ["bare MONAI loop", "ClassSketchLatentDiffusionInferer"]
    assert rows[1]["images_per_s"] > 0 and rows[1]["ratio"] > 0


def test_overlay_masking_cost_rows(capsys):
    assert main(["bench", "speed", "--parts", "overlays", "--overlay-sources", "64"]) == 0
    out = capsys.readouterr().out
    assert "(e) preprocessing to 256 px" in out and "| 64 | 48 |" in out
