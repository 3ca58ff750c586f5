from __future__ import annotations

import json

from monai_breastlt.cli.main import main


def test_phantom_then_data_info_then_split(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["phantom", "--out", str(out), "--head-count", "8", "--imbalance-ratio", "4", "--image-size", "32"]) == 0
    assert main(["data-info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 classes, 27 images, imbalance ratio 4.0" in text and "per split: training" in text
    assert main(["data-info", str(out / "cyst")]) == 2  # a folder of images, no class folders
    assert "no class sub-folders found" in capsys.readouterr().err
    assert main(["split", str(out), "--out", str(tmp_path / "dl.json"), "--seed", "1"]) == 0
    doc = json.loads((tmp_path / "dl.json").read_text())
    assert sum(len(doc[s]) for s in ("training", "validation", "test")) == 27 and doc["split"]["seed"] == 1


def test_help_and_bad_input(capsys, tmp_path):
    assert main([]) == 0
    assert "phantom" in capsys.readouterr().out
    assert main(["data-info", str(tmp_path / "missing")]) == 2
    assert "no such data source" in capsys.readouterr().err
