from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from conftest import tiny_ldm, tiny_perception
from PIL import Image

import monai_breastlt.synthesis.generate as gen_mod
from monai_breastlt.data import load_datalist, load_mixed_datalist
from monai_breastlt.synthesis import SyntheticPoolGenerator, plan_targets

TARGETS = [1, 2, 0, 3, 1, 2]


def _generator(tiny_phantom, out, **kw):
    _, classes = load_datalist(tiny_phantom)
    return SyntheticPoolGenerator(tiny_ldm(6), tiny_perception(), classes, out, image_size=32,
                                  num_inference_steps=2, batch_size=3, **kw)


def test_plan_targets():
    assert plan_targets([10, 4, 1]) == [0, 6, 9]
    assert plan_targets([10, 4, 1], "up_to", 5) == [0, 1, 4]
    assert plan_targets([10, 4, 1], "each", 2) == [2, 2, 2]
    with pytest.raises(ValueError, match="needs a non-negative n"):
        plan_targets([1], "up_to")


def test_generate_kill_and_resume_gives_the_same_pool(tiny_phantom, tmp_path, monkeypatch):
    sources, _ = load_datalist(tiny_phantom, "training")
    sources = [{"image": s["image"], "label": s["label"]} for s in sources]  # no masks at generation time
    ref = _generator(tiny_phantom, tmp_path / "ref").run(TARGETS, sources)

    calls = {"n": 0}
    real_save = gen_mod.save_png

    def dying_save(array, path):
        calls["n"] += 1
        if calls["n"] > 7:  # dies inside the third batch, after two complete batches
            raise KeyboardInterrupt("killed")
        real_save(array, path)

    monkeypatch.setattr(gen_mod, "save_png", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _generator(tiny_phantom, tmp_path / "pool").run(TARGETS, sources)
    partial = json.loads((tmp_path / "pool" / "pool.json").read_text())["training"]
    assert len(partial) == 3  # only the first complete batch's manifest was written before the kill
    monkeypatch.setattr(gen_mod, "save_png", real_save)
    (tmp_path / "pool" / partial[0]["image"]).unlink()  # a lost file: that entry is generated again
    manifest = _generator(tiny_phantom, tmp_path / "pool").run(TARGETS, sources)

    items, classes = load_datalist(manifest)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)) == sum(TARGETS)
    assert Counter(i["label"] for i in items) == {c: n for c, n in enumerate(TARGETS) if n}
    ref_items = {i["id"]: i for i in load_datalist(ref)[0]}
    for i in items:
        assert i["source"] == "synthetic" and i["sketch_from"] and Image.open(i["image"]).size == (32, 32)
        assert i["prescaled"] is True  # loaders scale it by the stored range, not its own min and max
        a, b = np.asarray(Image.open(i["image"]), int), np.asarray(Image.open(ref_items[i["id"]]["image"]), int)
        assert np.abs(a - b).max() <= 1  # same image as the uninterrupted run (batching may round differently)
    mixed, _ = load_mixed_datalist(tiny_phantom, manifest)
    assert sum(m["source"] == "synthetic" for m in mixed) == sum(TARGETS)


def test_pool_pointing_at_missing_files_is_named(tiny_phantom, tmp_path):
    sources, _ = load_datalist(tiny_phantom, "training")
    manifest = _generator(tiny_phantom, tmp_path / "p").run([1, 0, 0, 0, 0, 0], sources)
    item = load_datalist(manifest)[0][0]
    Image.open(item["image"]).close()
    import os

    os.remove(item["image"])
    with pytest.raises(FileNotFoundError, match=r"pool.json.*entry 0: image file .* does not exist"):
        load_mixed_datalist(tiny_phantom, manifest)


def test_full_disk_during_generation_fails_cleanly_then_resumes(tiny_phantom, tmp_path, monkeypatch):
    import errno
    import os

    import monai_breastlt.utils as utils

    sources, _ = load_datalist(tiny_phantom, "training")
    sources = [{"image": s["image"], "label": s["label"]} for s in sources]
    real_fsync, calls = os.fsync, {"n": 0}

    def filling_disk(fd):
        calls["n"] += 1
        if calls["n"] > 9:  # the disk fills up during the second batch (a batch: 3 images, 3 sketches, the manifest)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", filling_disk)
    with pytest.raises(OSError, match="disk full while writing .*free space and run again"):
        _generator(tiny_phantom, tmp_path / "pool").run(TARGETS, sources)
    monkeypatch.setattr(utils.os, "fsync", real_fsync)
    assert not list((tmp_path / "pool").rglob(".*.tmp"))  # no half-written files left behind
    items, _ = load_datalist(tmp_path / "pool" / "pool.json")  # the manifest on disk is complete and valid
    assert all(os.path.isfile(i["image"]) for i in items)
    manifest = _generator(tiny_phantom, tmp_path / "pool").run(TARGETS, sources)  # space freed: resume
    items, _ = load_datalist(manifest)
    assert Counter(i["label"] for i in items) == {c: n for c, n in enumerate(TARGETS) if n}
    assert len({i["id"] for i in items}) == sum(TARGETS)


def test_pool_records_its_sampling_settings(tiny_phantom, tmp_path):
    """The manifest says how the pool was sampled, guidance interval included (the inferer gets it: a limited
    interval gives other images than guidance at every step)."""
    sources = [{"image": s["image"], "label": s["label"]} for s in load_datalist(tiny_phantom, "training")[0]]
    every = _generator(tiny_phantom, tmp_path / "every", guidance_scale=3.0).run([1, 1, 0, 0, 0, 0], sources)
    late = _generator(tiny_phantom, tmp_path / "late", guidance_scale=3.0, guidance_interval=(0, 400)).run([1, 1, 0, 0, 0, 0], sources)
    settings = json.loads(late.read_text())["generator"]
    assert settings["guidance_interval"] == [0, 400] and settings["guidance_scale"] == 3.0
    assert json.loads(every.read_text())["generator"]["guidance_interval"] is None
    a, b = (np.asarray(Image.open(i["image"]), int) for i in (load_datalist(every)[0][0], load_datalist(late)[0][0]))
    assert np.abs(a - b).max() > 1


def test_resume_with_other_settings_is_refused(tiny_phantom, tmp_path):
    """Resuming a pool with another sampler (or guidance...) would mix two pools: refused, naming the file and the
    changed setting; the same settings resume, and an older manifest's unrecorded settings are not compared."""
    sources = [{"image": s["image"], "label": s["label"]} for s in load_datalist(tiny_phantom, "training")[0]]
    manifest = _generator(tiny_phantom, tmp_path / "p", sampler="ddim").run([1, 0, 0, 0, 0, 0], sources)
    with pytest.raises(ValueError, match=r"pool\.json.*sampler 'ddim' -> 'ddpm'"):
        _generator(tiny_phantom, tmp_path / "p", sampler="ddpm").run([2, 0, 0, 0, 0, 0], sources)
    with pytest.raises(ValueError, match="guidance_scale 2.0 -> 4.0"):
        _generator(tiny_phantom, tmp_path / "p", sampler="ddim", guidance_scale=4.0).run([2, 0, 0, 0, 0, 0], sources)
    assert len(load_datalist(_generator(tiny_phantom, tmp_path / "p", sampler="ddim").run([2, 0, 0, 0, 0, 0], sources))[0]) == 2
    doc = json.loads(manifest.read_text())
    doc["generator"] = {k: v for k, v in doc["generator"].items() if k not in ("perturb", "cross_class_sketches")}  # an older manifest
    manifest.write_text(json.dumps(doc))
    assert len(load_datalist(_generator(tiny_phantom, tmp_path / "p", sampler="ddim", perturb=0.0).run([3, 0, 0, 0, 0, 0], sources))[0]) == 3


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1 and <= 1000, got 0."),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 0, got nan."),
        ({"conditioning_scale": -1.0}, "conditioning_scale must be a finite number >= 0, got -1.0."),
        ({"perturb": 2.0}, "perturb must be a finite number >= 0 and <= 1, got 2.0."),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0."),
        ({"image_size": 31}, "image_size must be a multiple of the autoencoder's downsampling 2, got 31."),
        ({"guidance_interval": [900, 100]}, "guidance_interval t_high must be an integer >= 900 and <= 999, got 100."),
    ],
)
def test_settings_that_would_write_a_wrong_pool_are_refused(tiny_phantom, tmp_path, setting, message):
    _, classes = load_datalist(tiny_phantom)
    kwargs = {"image_size": 32, "num_inference_steps": 2, **setting}
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticPoolGenerator(tiny_ldm(6), tiny_perception(), classes, tmp_path / "pool", **kwargs)
    assert not (tmp_path / "pool").exists()


def test_another_image_size_than_the_models_is_refused(tiny_phantom, tmp_path):
    _, classes = load_datalist(tiny_phantom)
    model = tiny_ldm(6)
    model.image_size = [32, 32]
    with pytest.raises(ValueError, match=re.escape("the model was trained on 32x32 images (recorded in its checkpoint), image_size is 64")):
        SyntheticPoolGenerator(model, tiny_perception(), classes, tmp_path, image_size=64)


def test_the_rank_manifests_of_a_killed_multi_process_run_are_resumed(tiny_phantom, tmp_path, monkeypatch):
    sources, _ = load_datalist(tiny_phantom, "training")
    manifest = _generator(tiny_phantom, tmp_path / "p").run(TARGETS, sources)
    before = json.loads(manifest.read_text())
    # as torchrun leaves it when killed before rank 0 merged: each rank's entries in its own manifest
    entries = before["training"]
    for rank in (0, 1):
        (tmp_path / "p" / f"pool.rank{rank}.json").write_text(json.dumps({**before, "training": entries[rank::2]}))
    manifest.unlink()
    monkeypatch.setattr(gen_mod, "save_png", lambda *a: pytest.fail("an image was generated again"))
    _generator(tiny_phantom, tmp_path / "p").run(TARGETS, sources)
    assert json.loads(manifest.read_text()) == before and not list((tmp_path / "p").glob("pool.rank*.json"))
