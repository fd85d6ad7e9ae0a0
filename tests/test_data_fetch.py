"""`aigen fetch-data` without the kaggle package or credentials: manual steps, clean error."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from aigen.data import fetch
from aigen.errors import UserError


@pytest.fixture
def no_kaggle(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kaggle" else real_find_spec(name, *a))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def parse(argv):
    parser = argparse.ArgumentParser()
    fetch.add_arguments(parser)
    return parser.parse_args(argv)


def test_without_kaggle_prints_manual_steps(no_kaggle, tmp_path, capsys):
    dest = tmp_path / "aiart"
    with pytest.raises(UserError, match="kaggle package is not installed.*no Kaggle credentials"):
        fetch.run(parse(["--dest", str(dest)]))
    err = capsys.readouterr().err
    assert fetch.DATASET_URL in err and f"{dest}/AiArtData/AiArtData/" in err
    assert not dest.exists()


def test_credentials_detected(no_kaggle, tmp_path, monkeypatch):
    assert not fetch.credentials_found()
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text("{}")
    assert fetch.credentials_found()
    assert fetch.missing_requirements() == ["the kaggle package is not installed"]


def test_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "aiart").mkdir()
    (tmp_path / "aiart" / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        fetch.run(parse(["--dest", str(tmp_path / "aiart")]))
