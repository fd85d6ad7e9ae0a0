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
