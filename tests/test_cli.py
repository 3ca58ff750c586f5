from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from monai_breastlt.cli.main import main
from monai_breastlt.data import write_datalist


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


def _run(capsys, *argv):
    """Exit code, stdout and stderr of one command."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write into, root included (root ignores permissions: the immutable flag then)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        (folder / "probe").touch()
    except OSError:
        pass
    else:
        (folder / "probe").unlink()
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a folder read-only for root here (no chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_phantom_refuses_to_overwrite_and_checks_everything_first(tmp_path, capsys, read_only_dir):
    out = tmp_path / "p"
    args = ["phantom", "--out", str(out), "--head-count", "6", "--imbalance-ratio", "3", "--image-size", "16"]
    assert _run(capsys, *args)[0] == 0
    assert _run(capsys, *args)[0] == 0  # the same arguments write the same files again
    code, _, err = _run(capsys, *args[:-1], "24")
    assert code == 2 and _error_line(err) == (f"error: {out / 'datalist.json'} already exists (other data, or a phantom made with other "
                                             "arguments); pass --overwrite (overwrite=True) to replace it, or choose another output folder.")
    assert json.loads((out / "datalist.json").read_text())["phantom"]["image_size"] == 16  # untouched
    assert _run(capsys, *args[:-1], "24", "--overwrite")[0] == 0
    assert json.loads((out / "datalist.json").read_text())["phantom"]["image_size"] == 24
    code, _, err = _run(capsys, "phantom", "--out", str(tmp_path / "new"), "--image-size", "0")
    assert code == 2 and _error_line(err) == "error: image_size must be an integer >= 16, got 0."
    assert not (tmp_path / "new").exists()  # nothing left behind
    code, _, err = _run(capsys, "phantom", "--out", str(out / "datalist.json" / "sub"), "--image-size", "16")
    assert code == 2 and _error_line(err) == f"error: {out / 'datalist.json' / 'sub'}: cannot create the phantom folder: {out / 'datalist.json'} is a file, not a folder."
    code, _, err = _run(capsys, "phantom", "--out", str(read_only_dir / "p"), "--image-size", "16")
    assert code == 2 and _error_line(err).startswith(f"error: {read_only_dir / 'p'}: cannot write the phantom folder ({read_only_dir}: ")


def test_split_refuses_bad_sources_and_outputs_before_writing(tmp_path, capsys, read_only_dir):
    src = tmp_path / "p"
    assert _run(capsys, "phantom", "--out", str(src), "--head-count", "6", "--imbalance-ratio", "3", "--image-size", "16")[0] == 0
    out = tmp_path / "dl.json"
    code, _, err = _run(capsys, "split", str(src), "--out", str(out), "--fractions", "1", "0", "0")
    n = sum(len(v) for k, v in json.loads((src / "datalist.json").read_text()).items() if k in ("training", "validation", "test"))
    assert code == 2 and f"leave validation and test empty (training {n}, validation 0, test 0); training needs training and " \
                         "validation entries" in _error_line(err) and not out.exists()
    code, _, err = _run(capsys, "split", str(src), "--out", str(out), "--min-count", "3")
    assert code == 2 and _error_line(err) == (f"error: {src / 'datalist.json'}: min_count 3 (--min-count) merges the rare classes of a "
                                             "BUS-BRA folder (one holding bus_data.csv) only; this source is a datalist, whose classes are "
                                             "used as they are: leave it out.")
    code, _, err = _run(capsys, "data-info", str(src / "cyst"), "--min-count", "3")
    assert code == 2 and "this source is a class folder" in _error_line(err)
    (src / "cyst" / "cyst_0000.png").unlink()
    (src / "cyst" / "cyst_0001.png").write_bytes(b"")
    code, _, err = _run(capsys, "split", str(src), "--out", str(out))
    line = _error_line(err)
    assert code == 2 and not out.exists()
    assert line.startswith(f"error: {src}: 2 unusable image file(s) among {2 * n}: ")  # images and masks and "cyst_0000.png: file not found" in line
    assert "cyst_0001.png: empty file (0 bytes)" in line
    code, _, err = _run(capsys, "split", str(src), "--out", str(src / "datalist.json" / "dl.json"))
    assert code == 2 and _error_line(err) == (f"error: {src / 'datalist.json'}: cannot create the folder of --out: {src / 'datalist.json'} "
                                             "is a file, not a folder.")
    code, _, err = _run(capsys, "split", str(src), "--out", str(read_only_dir / "dl.json"))
    assert code == 2 and _error_line(err).startswith(f"error: {read_only_dir}: cannot write the folder of --out")


def test_leakage_is_warned_at_data_info_and_split(tmp_path, capsys, caplog):
    same = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    for k in range(6):  # six copies of one image under six names: they cannot all stay in one split
        (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(same).save(tmp_path / "src" / "a" / f"a{k}.png")
        (tmp_path / "src" / "b").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 10 * k, np.uint8)).save(tmp_path / "src" / "b" / f"b{k}.png")
    with caplog.at_level("WARNING"):
        assert _run(capsys, "split", str(tmp_path / "src"), "--out", str(tmp_path / "dl.json"))[0] == 0
    assert re.search(r"dl.json: split leakage: \d+ image\(s\) in more than one split \(same file or same bytes\), e\.g\. \w+ entry \d+ \(a\d.png\)",
                     caplog.text)
    caplog.clear()
    src = tmp_path / "src"
    write_datalist(tmp_path / "dl.json", {"training": [{"image": str(src / "a" / "a0.png"), "label": 0, "group": "patient_7"}],
                                          "test": [{"image": str(src / "b" / "b1.png"), "label": 1, "group": "patient_7"}]}, ["a", "b"])
    with caplog.at_level("WARNING"):
        assert _run(capsys, "data-info", str(tmp_path / "dl.json"))[0] == 0
    assert "1 patient(s) ('group') in more than one split, e.g. 'patient_7' in test and training" in caplog.text


def test_json_mistakes_name_the_file(tmp_path, capsys):
    path = tmp_path / "dl.json"
    path.write_text('{"classes": ["a", "b"],}')
    code, _, err = _run(capsys, "data-info", str(path))
    assert code == 2 and _error_line(err).startswith(f"error: {path}: not valid JSON (")
    assert "(a comma before a closing bracket?)" in err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"classes": ["a"], "training": [{"image": "x.png", "label": 0}]}).encode())
    assert _run(capsys, "data-info", str(path))[0] == 0  # a byte-order mark is read, not refused
