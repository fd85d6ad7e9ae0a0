"""The seeded, stratified, duplicate-aware split and the split.csv round trip."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen.data.dataset import Dataset, ImageInfo, load_dataset
from aigen.data.split import EXCLUDED, SPLIT_HEADER, SPLITS, make_split, read_split, write_split
from aigen.errors import UserError


def fake_dataset(contents: list[tuple[str, int]]) -> Dataset:
    """A Dataset without files: (content key, label) per image; equal keys are duplicates.
    Image i of key k under label l is named "l/k.n" (n counts earlier copies)."""
    seen: dict[tuple[str, int], int] = {}
    images = []
    for key, label in contents:
        n = seen[key, label] = seen.get((key, label), -1) + 1
        images.append(ImageInfo(path=Path(f"/d/{label}/{key}.{n}"), rel_path=f"{label}/{key}.{n}", label=label,
                                sha256=hashlib.sha256(key.encode()).hexdigest(), format="PNG", mode="RGB",
                                width=8, height=8, n_bytes=10))
    images.sort(key=lambda im: im.rel_path)
    return Dataset(root=Path("/d"), images=images, skipped=[], class_names={1: "ai", 0: "real"})


def distinct(n_ai: int, n_real: int) -> Dataset:
    return fake_dataset([(f"a{i}", 1) for i in range(n_ai)] + [(f"r{i}", 0) for i in range(n_real)])


def test_stratified_proportions():
    ds = distinct(200, 100)
    counts = make_split(ds, seed=0).counts(ds.labels)
    assert counts["train"] == {0: 70, 1: 140}
    assert counts["val"] == {0: 15, 1: 30}
    assert counts["test"] == {0: 15, 1: 30}
    assert counts[EXCLUDED] == {0: 0, 1: 0}


def test_deterministic_per_seed_and_seeds_differ():
    ds = distinct(60, 40)
    assert make_split(ds, seed=3).assignment == make_split(ds, seed=3).assignment
    assert make_split(ds, seed=3).assignment != make_split(ds, seed=4).assignment
    split = make_split(ds, seed=3)
    all_idx = np.sort(np.concatenate([split.indices(s) for s in SPLITS]))
    assert all_idx.tolist() == list(range(100))


def test_duplicates_share_a_split():
    contents = [(f"a{i}", 1) for i in range(40)] + [(f"r{i}", 0) for i in range(40)]
    contents += [("a3", 1)] * 3 + [("r7", 0)] * 2 + [("a11", 1)]  # exact copies
    ds = fake_dataset(contents)
    for seed in range(10):
        split = make_split(ds, seed)
        by_sha: dict[str, set[str]] = {}
        for im, name in zip(ds.images, split.assignment):
            by_sha.setdefault(im.sha256, set()).add(name)
        assert all(len(names) == 1 for names in by_sha.values())


def test_cross_label_duplicates_excluded():
    ds = fake_dataset([(f"a{i}", 1) for i in range(10)] + [(f"r{i}", 0) for i in range(10)] + [("a0", 0)])
    split = make_split(ds, seed=0)
    excluded = [ds.images[i].rel_path for i in split.indices(EXCLUDED)]
    assert excluded == ["0/a0.0", "1/a0.0"]


def test_small_datasets():
    ds = distinct(3, 3)
    counts = make_split(ds, seed=1).counts(ds.labels)
    assert all(counts[s] == {0: 1, 1: 1} for s in SPLITS)
    # 3 distinct contents per class, one of them duplicated: still one group per split
    ds = fake_dataset([("a0", 1), ("a0", 1), ("a0", 1), ("a1", 1), ("a2", 1), ("r0", 0), ("r1", 0), ("r2", 0)])
    for seed in range(5):
        counts = make_split(ds, seed).counts(ds.labels)
        assert all(counts[s][0] >= 1 and counts[s][1] >= 1 for s in SPLITS)
    with pytest.raises(UserError, match="too few images.*real class has 2 distinct"):
        make_split(fake_dataset([("a0", 1), ("a1", 1), ("a2", 1), ("r0", 0), ("r1", 0), ("r1", 0)]), seed=0)


def test_split_csv_round_trip_and_tamper_detection(tmp_path):
    ds = distinct(20, 20)
    split = make_split(ds, seed=5)
    write_split(tmp_path / "split.csv", ds, split)
    with open(tmp_path / "split.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["set", "path", "sha256", "label", "split"]
    assert rows[1] == [Path(ds.root).name, ds.images[0].rel_path, ds.images[0].sha256,
                       str(ds.images[0].label), split.assignment[0]]
    assert read_split(tmp_path / "split.csv", ds).assignment == split.assignment

    changed = distinct(20, 20)
    changed.images[4] = ImageInfo(**{**vars(changed.images[4]), "sha256": "0" * 64})
    with pytest.raises(UserError, match="changed since the split was made"):
        read_split(tmp_path / "split.csv", changed)
    with pytest.raises(UserError, match="lists 0/r19.0, but it is missing"):
        read_split(tmp_path / "split.csv", distinct(20, 19))
    with pytest.raises(UserError, match="1 image.*not in"):
        read_split(tmp_path / "split.csv", distinct(21, 20))
    (tmp_path / "bad.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="not a split file"):
        read_split(tmp_path / "bad.csv", ds)


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, "PNG")


def test_end_to_end_with_files(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        _png(root / "fake" / f"a{i}.png", i)
        _png(root / "real" / f"r{i}.png", 100 + i)
    _png(root / "real" / "copy_of_a0.png", 0)  # the same content under both classes
    ds = load_dataset(root, workers=1, progress=False)
    conflict = {s.path.name: s.reason for s in ds.skipped}
    assert conflict == {"a0.png": "identical content also under the other class: real/copy_of_a0.png",
                        "copy_of_a0.png": "identical content also under the other class: fake/a0.png"}
    split = make_split(ds, seed=0)
    assert sorted(ds.images[i].rel_path for i in split.indices(EXCLUDED)) == ["fake/a0.png", "real/copy_of_a0.png"]
    write_split(tmp_path / "split.csv", ds, split)
    assert read_split(tmp_path / "split.csv", load_dataset(root, workers=1, progress=False)).assignment == split.assignment
    _png(root / "real" / "r3.png", 999)  # the file changes after the split was written
    with pytest.raises(UserError, match="real/r3.png changed since the split was made"):
        read_split(tmp_path / "split.csv", load_dataset(root, workers=1, progress=False))
    (root / "real" / "r3.png").write_bytes(b"")  # ... or becomes unusable
    with pytest.raises(UserError, match="r3.png, but it is now skipped \\(empty file\\)"):
        read_split(tmp_path / "split.csv", load_dataset(root, workers=1, progress=False))


def _edited(tmp_path, ds, split, edit) -> Path:
    """split.csv of `split` with edit(rows) applied to its data rows (a hand-edited split file)."""
    write_split(tmp_path / "split.csv", ds, split)
    with open(tmp_path / "split.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    edit(rows)
    with open(tmp_path / "edited.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return tmp_path / "edited.csv"


def test_a_reused_split_must_keep_the_rules(tmp_path):
    contents = [(f"a{i}", 1) for i in range(20)] + [(f"r{i}", 0) for i in range(20)]
    ds = fake_dataset(contents + [("a3", 1), ("a0", 0)])  # a copy of a3; a0 under both labels
    split = make_split(ds, seed=0)
    SHA, SPLIT = SPLIT_HEADER.index("sha256"), SPLIT_HEADER.index("split")  # noqa: N806
    rows_of = lambda rows, sha: [r for r in rows if r[SHA] == sha]  # noqa: E731
    dup_sha = next(im.sha256 for im in ds.images
                   if sum(other.sha256 == im.sha256 for other in ds.images) == 2
                   and im.sha256 not in ds.conflicting_sha256s())
    conflict_sha = next(iter(ds.conflicting_sha256s()))

    def split_the_copies(rows):
        first, second = rows_of(rows, dup_sha)
        second[SPLIT] = "test" if first[SPLIT] != "test" else "train"

    with pytest.raises(UserError, match="identical files .* in different splits"):
        read_split(_edited(tmp_path, ds, split, split_the_copies), ds)

    def use_the_conflict(rows):
        rows_of(rows, conflict_sha)[0][SPLIT] = "train"

    with pytest.raises(UserError, match="under both labels and must be excluded"):
        read_split(_edited(tmp_path, ds, split, use_the_conflict), ds)

    def no_val(rows):
        for r in rows:
            if r[SPLIT] == "val":
                r[SPLIT] = "train"

    with pytest.raises(UserError, match="has no val images"):
        read_split(_edited(tmp_path, ds, split, no_val), ds)
    assert read_split(_edited(tmp_path, ds, split, lambda rows: None), ds).assignment == split.assignment


def test_a_file_name_that_is_not_utf8_round_trips(tmp_path):
    """b"caf\xe9.png" reaches Python as "caf\udce9.png": written as caf\xe9.png (valid UTF-8),
    and read back as the same image."""
    import os

    ds = distinct(10, 10)
    odd = os.fsdecode(b"1/caf\xe9.png")
    ds.images[0] = ImageInfo(**{**vars(ds.images[0]), "rel_path": odd})
    ds.images.sort(key=lambda im: im.rel_path)
    split = make_split(ds, seed=1)
    write_split(tmp_path / "split.csv", ds, split)
    text = (tmp_path / "split.csv").read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "\nd,1/caf\\xe9.png," in text  # set d (the root /d), then the path
    assert read_split(tmp_path / "split.csv", ds).assignment == split.assignment
    assert len(ds.manifest_sha256()) == 64


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00binary", b"a\x00b,c\n"])
def test_a_binary_split_file_is_a_user_error(tmp_path, content):
    (tmp_path / "split.csv").write_bytes(content)
    with pytest.raises(UserError, match="is not a split file"):
        read_split(tmp_path / "split.csv", distinct(4, 4))
