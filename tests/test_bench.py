from __future__ import annotations

from monai_breastlt.bench.speed import bench_sampler
from monai_breastlt.cli.main import main


def test_bench_sampler_rows(capsys):
    rows = bench_sampler([2000], num_classes=5, repeats=1)
    assert rows[0]["items"] == 2000 and rows[0]["epoch_samples"] > 0 and rows[0]["ratio"] > 0
    assert main(["bench", "speed", "--sizes", "1000"]) == 0
    assert "| 1000 |" in capsys.readouterr().out
