from __future__ import annotations

from conftest import TINY_LDM

from monai_breastlt.bench.speed import bench_overlays, bench_sampler
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
    assert "(e) preprocessing to 256 px" in out and "| 64 | 48 |" in out and "overlay pixels found" in out


def test_overlay_detection_is_scored_against_the_phantoms_exact_marks():
    (row,) = bench_overlays(256, (128,), n_images=24, repeats=1)
    assert row["images"] == 24 and 0 <= row["pixel_precision"] <= 1
    # most burnt-in pixels are found and nearly every marked scan is flagged, far more often than a clean one
    assert row["pixel_recall"] > 0.6 and row["flagged_marked"] > 0.8 and row["flagged_clean"] < row["flagged_marked"] - 0.4
