from __future__ import annotations

from conftest import shared_data

from monai_breastlt.data import read_busbra, read_busi, stratified_group_split
from monai_breastlt.transforms import ultrasound_preprocessing


def test_busbra_loads_through_the_same_api():
    root = shared_data("busbra")
    items, classes = read_busbra(root)
    assert len(items) == 1483 and len(classes) == 27 and classes[0] == "fibroadenoma"
    merged, mclasses = read_busbra(root, min_count=10)
    assert mclasses[-1] == "other" and len(mclasses) == 12
    split = stratified_group_split(merged, seed=0)
    groups = {k: {i["group"] for i in v} for k, v in split.items()}
    assert not groups["training"] & groups["test"]
    sample = ultrasound_preprocessing(64)(items[0])
    assert sample["image"].shape == (1, 64, 64) and sample["mask"].shape == (1, 64, 64) and sample["mask"].max() == 1


def test_busi_deduplicated():
    items, classes = read_busi(shared_data("busi"))
    assert classes == ["benign", "malignant", "normal"] and len(items) < 667
    sample = ultrasound_preprocessing(32, mask_key=None)(items[0])
    assert sample["image"].shape == (1, 32, 32)  # RGB PNG converted to grey
