"""Atomic output (aigen.io): a folder or file is either absent/old or complete, never half-written."""

import json

import pytest

from aigen import io
from aigen.errors import UserError


def test_atomic_folder_appears_whole_and_only_on_success(tmp_path):
    out = tmp_path / "out"
    with io.atomic_folder(out) as work:
        (work / "a.txt").write_text("a")
        assert not out.exists() and work.parent == tmp_path and work.name.startswith(".out.")
    assert (out / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_leaves_nothing_when_interrupted(tmp_path, error):
    out = tmp_path / "out"
    with pytest.raises(error):
        with io.atomic_folder(out) as work:
            (work / "half.txt").write_text("half")
            raise error()
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_fills_an_empty_folder_and_replaces_only_when_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with io.atomic_folder(out) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    with pytest.raises(UserError, match="could not rename"):  # not empty, not replace=True
        with io.atomic_folder(out) as work:
            (work / "newer.txt").write_text("newer")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    with io.atomic_folder(out, replace=True) as work:
        (work / "newer.txt").write_text("newer")
    assert [p.name for p in out.iterdir()] == ["newer.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_new_folder(tmp_path):
    assert io.check_new_folder(tmp_path / "new") == (tmp_path / "new").absolute()
    (tmp_path / "empty").mkdir()
    assert io.check_new_folder(tmp_path / "empty").is_dir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="non-empty folder"):
        io.check_new_folder(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        io.check_new_folder(tmp_path / "file")


def test_unwritable_parent_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write the folder"):
        with io.atomic_folder(tmp_path / "file" / "out"):
            pass


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    io.write_json(path, {"a": 1})
    io.write_json(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        io.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"b": [1, 2]}  # the old content survives a failure
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---- permissions and full disks


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_users_usual_permissions(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "r.json", {"a": 1})
        with io.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("r.json", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_disk_full_error_recognises_full_disks_only(tmp_path, monkeypatch):
    import errno

    short_writes = (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"),
                    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                    OSError("100000 requested and 8176 written"))  # numpy's, no errno
    for exc in short_writes:  # tmp_path has room: a short write there is something else
        assert io.disk_full_error(exc, tmp_path) is None
    monkeypatch.setattr(io, "_free_bytes", lambda folder: 4096)  # a patched full disk
    for exc in (OSError(errno.ENOSPC, "No space left on device"),
                OSError(errno.EDQUOT, "Disk quota exceeded"), *short_writes):
        error = io.disk_full_error(exc, tmp_path / "out")
        assert isinstance(error, UserError)
        assert str(error).startswith(f"cannot write into {tmp_path / 'out'}: ")
        assert "\n" not in str(error)
    assert "AIGEN_CACHE_DIR" in str(io.disk_full_error(OSError(errno.ENOSPC, "x"), tmp_path,
                                                       "or set AIGEN_CACHE_DIR"))
    for exc in (OSError(errno.EACCES, "Permission denied"), RuntimeError("a bug"), ValueError()):
        assert io.disk_full_error(exc, tmp_path) is None


def test_a_full_disk_while_writing_is_a_user_error_and_leaves_nothing(tmp_path):
    """A patched write (runs everywhere): ENOSPC in the middle of writing a file."""
    import errno

    with pytest.raises(UserError, match=f"cannot write into {tmp_path}: no space left"):
        with io.atomic_path(tmp_path / "r.json") as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_full_tmpfs_numpy_torch_and_figures(small_disk):
    """A real full disk: a 64 KiB tmpfs. numpy and PIL (matplotlib's PNG writer) raise OSError
    ENOSPC, torch.save a RuntimeError; each becomes a one-line UserError naming the folder."""
    import numpy as np
    import torch

    from aigen.study import figures

    disk = small_disk(64)
    writers = {
        "a.npy": lambda tmp: np.save(open(tmp, "wb"), np.zeros(100_000)),
        "b.pt": lambda tmp: torch.save(torch.zeros(100_000), tmp),
    }
    for name, write in writers.items():
        with pytest.raises(UserError, match=f"cannot write into {disk}: "):
            with io.atomic_path(disk / name) as tmp:
                write(tmp)
    fig = figures._figure(30, 30)
    fig.subplots().imshow(np.random.default_rng(0).random((400, 400)))
    with pytest.raises(UserError, match=f"cannot write into {disk}: no space left"):
        figures._save(fig, disk / "c.png")
    assert list(disk.iterdir()) == []
