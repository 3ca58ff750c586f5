from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from monai_breastlt.data import (
    deduplicate_by_hash,
    load_datalist,
    load_datalist_file,
    merge_rare_classes,
    read_csv_datalist,
    scan_class_folder,
    validate_items,
    write_csv_datalist,
    write_datalist,
)


def _png(path, value=0, shape=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_scan_class_folder_with_merged_masks(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    _png(tmp_path / "benign" / "a_mask.png")
    _png(tmp_path / "benign" / "a_mask_1.png")
    _png(tmp_path / "malignant" / "b.png", 3)
    _png(tmp_path / "malignant" / "c.png", 4)
    (tmp_path / "malignant" / "notes.txt").write_text("x")
    items, classes = scan_class_folder(tmp_path)
    assert classes == ["benign", "malignant"]
    assert [i["label"] for i in items] == [0, 1, 1]
    assert len(items[0]["mask"]) == 2 and "mask" not in items[1]


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        scan_class_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class 'empty' has no images"):
        scan_class_folder(tmp_path)
    _png(tmp_path / "empty" / "x_mask.png")
    _png(tmp_path / "empty" / "y.png")
    with pytest.raises(ValueError, match="mask files without an image: x"):
        scan_class_folder(tmp_path)


def test_datalist_roundtrip_relative_paths(tmp_path):
    items = [{"image": str(tmp_path / "img" / f"{i}.png"), "label": i % 2} for i in range(4)]
    path = write_datalist(tmp_path / "dl.json", {"training": items[:3], "test": items[3:]}, ["a", "b"])
    raw = json.loads(path.read_text())
    assert raw["training"][0]["image"] == "img/0.png"
    loaded, classes = load_datalist(path, "training")
    assert classes == ["a", "b"] and loaded[0]["image"] == items[0]["image"]
    assert loaded[1]["class_name"] == "b" and loaded[1]["source"] == "real"
    with pytest.raises(KeyError, match="section 'validation' not found"):
        load_datalist(path, "validation")


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "expected a JSON object"),
        ({"training": []}, "missing or invalid 'classes'"),
        ({"classes": ["a"]}, "no data sections"),
        ({"classes": ["a"], "training": [{"label": 0}]}, "entry 0 has no 'image' field"),
        ({"classes": ["a"], "training": [{"image": "x.png"}]}, "entry 0 has no 'label' field"),
        ({"classes": ["a"], "training": [{"image": "x.png", "label": 3}]}, r"label 3 is not a class index in \[0, 0\]"),
        ({"classes": ["a"], "training": [{"image": "x.png", "label": "zz"}]}, "label 'zz' is not in the class list"),
        ({"classes": ["a", "b"], "training": [{"image": "x.png", "label": 0, "class_name": "b"}]}, "disagrees with label 0"),
        ({"classes": ["a"], "training": [{"image": "x.png", "label": 0}, {"image": "x.png", "label": 0}]}, "duplicate entry"),
        ({"classes": ["a"], "training": [{"image": "x.png", "label": 0, "source": "fake"}]}, "source 'fake'"),
        ({"classes": ["a"], "training": [{"image": "x.png", "label": 0, "prescaled": "yes"}]}, "prescaled 'yes' is not true or false"),
    ],
)
def test_bad_datalists_are_named(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as e:
        load_datalist_file(path)
    assert str(path) in str(e.value)


def test_invalid_json_names_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"classes": [')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON .* line 1"):
        load_datalist_file(path)


def test_check_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file .*missing.png does not exist"):
        validate_items([{"image": str(tmp_path / "missing.png"), "label": 0}], ["a"], check_files=True)


def test_csv_roundtrip_and_missing_column(tmp_path):
    items = [{"image": f"i{k}.png", "label": "b" if k else "a", "group": f"p{k // 2}"} for k in range(5)]
    write_csv_datalist(tmp_path / "l.csv", items)
    got, classes = read_csv_datalist(tmp_path / "l.csv", group_col="group")
    assert classes == ["b", "a"]  # most frequent first
    assert [g["label"] for g in got] == [1, 0, 0, 0, 0] and got[2]["group"] == "p1"
    with pytest.raises(ValueError, match="column 'patient' not found"):
        read_csv_datalist(tmp_path / "l.csv", group_col="patient")


def test_deduplicate_and_merge_rare(tmp_path):
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 1)
    _png(tmp_path / "c.png", 2)
    items = [{"image": str(tmp_path / n), "label": k} for k, n in enumerate(["a.png", "b.png", "c.png"])]
    kept, dropped = deduplicate_by_hash(items)
    assert [k["image"] for k in kept] == [items[0]["image"], items[2]["image"]] and len(dropped) == 1
    items = [{"image": str(k), "label": lab} for k, lab in enumerate([0, 0, 0, 1, 2])]
    merged, classes = merge_rare_classes(items, ["x", "y", "z"], min_count=2)
    assert classes == ["x", "other"] and [m["label"] for m in merged] == [0, 0, 0, 1, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.text("abc", min_size=1, max_size=3)), min_size=1, max_size=30, unique_by=lambda t: t[1]))
def test_validate_items_property(entries):
    """Any entry list with valid labels validates to the same labels; an out-of-range label is always named."""
    classes = ["c0", "c1", "c2", "c3", "c4"]
    items = [{"image": f"{name}.png", "label": lab} for lab, name in entries]
    out = validate_items(items, classes)
    assert [o["label"] for o in out] == [lab for lab, _ in entries]
    assert all(o["class_name"] == classes[o["label"]] for o in out)
    items[-1]["label"] = 5
    with pytest.raises(ValueError, match=f"entry {len(items) - 1} .*label 5"):
        validate_items(items, classes)


def test_classes_without_real_training_images_are_reported(tmp_path, caplog):
    from monai_breastlt.data import load_training_data

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    write_datalist(tmp_path / "d.json", {"training": [{"image": str(img), "label": 0}]}, ["cyst", "mastitis", "phyllodes"])
    write_datalist(tmp_path / "pool.json", {"training": [{"image": str(img), "label": 1}]}, ["cyst", "mastitis", "phyllodes"])
    with caplog.at_level("WARNING"):
        data = load_training_data(tmp_path / "d.json", tmp_path / "pool.json")
    assert data["real_counts"] == [1, 0, 0]
    assert "class 'mastitis' has no real image in section 'training'; it is learnt from its 1 synthetic images only" in caplog.text
    assert "class 'phyllodes' has no real image in section 'training'; no real or synthetic image" in caplog.text
    assert "1 of 1 synthetic entries have no 'prescaled' field" in caplog.text  # an old pool: read as a real scan
    caplog.clear()
    write_datalist(tmp_path / "pool.json", {"training": [{"image": str(img), "label": 1, "prescaled": True}]}, ["cyst", "mastitis", "phyllodes"])
    with caplog.at_level("WARNING"):
        load_training_data(tmp_path / "d.json", tmp_path / "pool.json")
    assert "prescaled" not in caplog.text


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"classes": ["cyst", "fibroadenoma", "cyst"], "training": []}, "'classes' names 'cyst' twice \\(entries 0 and 2\\)"),
        ({"classes": ["cyst", ""], "training": []}, "'classes' entry 1 is ''; every class needs a non-empty name"),
        ({"classes": ["cyst", " "], "training": []}, "'classes' entry 1 is ' '"),
        ({"classes": ["cyst"], "training": {}}, "section 'training' is dict {}, expected a list of entries"),
        ({"classes": ["a"], "training": [{"image": None, "label": 0}]}, "training\\]: entry 0: 'image' is null, expected a file path"),
        ({"classes": ["a"], "training": [{"image": "", "label": 0}]}, "training\\]: entry 0: 'image' is \"\", expected a file path"),
        ({"classes": ["a"], "training": [{"image": "x.png", "mask": "", "label": 0}]}, "entry 0: 'mask' is \"\""),
        ({"classes": ["a", "b"], "training": [{"image": "x.png", "label": 1.7}]}, "label 1.7 is not an integer class index in \\[0, 1\\]"),
        ({"classes": ["a", "b"], "training": [{"image": "x.png", "label": 1.0}]}, "label 1.0 is not an integer class index"),
        ({"classes": ["a", "b"], "training": [{"image": "x.png", "label": True}]}, "label True is not an integer class index"),
    ],
)
def test_silently_accepted_datalists_are_refused(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as e:
        load_datalist_file(path)
    assert str(path) in str(e.value)


def test_a_null_mask_means_no_mask_and_numpy_labels_are_integers(tmp_path):
    items = validate_items([{"image": "x.png", "mask": None, "label": np.int64(1)}], ["a", "b"])
    assert "mask" not in items[0] and items[0]["label"] == 1 and type(items[0]["label"]) is int


def test_json_with_a_byte_order_mark_loads_and_a_trailing_comma_is_named(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"classes": ["a"], "training": [{"image": "x.png", "label": 0}]}).encode())
    assert load_datalist(path)[1] == ["a"]  # what Windows editors write is read as it is meant
    path = tmp_path / "comma.json"
    path.write_text('{"classes": ["a"], "training": [{"image": "x.png", "label": 0},]}')
    with pytest.raises(ValueError, match=r"comma.json: not valid JSON \(.* at line 1, column \d+ \(a comma before a closing bracket\?\)\)"):
        load_datalist_file(path)


def test_csv_with_an_empty_class_or_image_cell_is_refused(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image,label\na.png,cyst\nb.png,\n")
    with pytest.raises(ValueError, match=r"l.csv: line 3: column 'label' is empty; every row needs an image and a class name"):
        read_csv_datalist(path)
    path.write_text("image,label\n,cyst\n")
    with pytest.raises(ValueError, match=r"l.csv: line 2: column 'image' is empty"):
        read_csv_datalist(path)
    path.write_text("image,label\na.png,a\n")
    with pytest.raises(ValueError, match="'classes' names 'a' twice"):
        read_csv_datalist(path, classes=["a", "a"])


def test_pool_of_another_class_order_is_refused(tmp_path):
    from monai_breastlt.data import load_pool_items

    write_datalist(tmp_path / "pool.json", {"training": [{"image": "p.png", "label": 0}]}, ["b", "a"])
    with pytest.raises(ValueError, match=r"pool.json: pool classes \['b', 'a'\] differ from .* \['a', 'b'\] \(same names, another order"):
        load_pool_items(tmp_path / "pool.json", ["a", "b"], check_files=False)
