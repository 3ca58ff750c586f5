from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

import monai_breastlt.utils as utils
from monai_breastlt.utils import atomic_open, atomic_torch_save, latest_checkpoint, torch_load_safe


def test_atomic_open_replaces_whole_files_with_usual_permissions(tmp_path):
    path = tmp_path / "a.json"
    with atomic_open(path) as f:
        f.write("one")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of tw")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "one" and not list(tmp_path.glob(".*.tmp"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~utils._UMASK  # not mkstemp's 0600


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=r"cannot write .*outputs/models/model.pt: .*is the output folder writable\?"):
        atomic_torch_save({"x": torch.zeros(1)}, blocker / "models" / "model.pt")


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "pool.json"
    with atomic_open(path) as f:
        f.write("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils.os, "fsync", no_space)
    with pytest.raises(OSError, match=r"disk full while writing .*pool.json; the previous version \(if any\) is intact"):
        with atomic_open(path) as f:
            f.write("new")
    assert path.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_latest_checkpoint_ignores_temporary_files_and_corrupt_files_are_named(tmp_path):
    atomic_torch_save({"epoch": 1}, tmp_path / "checkpoint_epoch=1.pt")
    (tmp_path / ".checkpoint_epoch=2.pt.abc.tmp").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=1.pt")
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="broken.pt"):
        torch_load_safe(tmp_path / "broken.pt")
