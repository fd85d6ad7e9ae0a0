"""The packed preprocessed store and the file-hash index (docs/scale.md).

- `FileIndex`: (absolute path, size, mtime_ns, pixel limit) -> what reading the file gave (sha256,
  header probe, or the reason it is unusable), in one SQLite file, so a warm load stats the files
  instead of re-reading and re-hashing them. `load_dataset(rehash=True)` ignores it.
- The store: for one (dataset manifest, input spec), the uint8 inputs of every image of the dataset
  in its order (`Dataset.images`), packed row after row in one file
  `store/<spec.key>/<manifest sha256>.u8`. It is written once (atomically) and opened in O(1): the
  manifest fixes which image each row holds, so the file needs no index of its own.
- `RowFile`: reads rows of such a file by offset (pread), so only the rows asked for are in the
  process's memory (a memory map would count every page it touched in the process's RSS), and it
  pickles as a path, so DataLoader workers each open their own descriptor.

Every parameter that changes the bytes of a row is in `Spec.key`, so a new preprocessing field
(e.g. a harmonisation step) is a new store, never a stale one.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from aigen.data.preprocess import Spec


class RowFile:
    """Fixed-size rows of `dtype` with shape `row_shape`, read by offset from a flat file."""

    def __init__(self, path: str | os.PathLike, row_shape: Sequence[int], dtype=np.uint8,
                 n_rows: int | None = None):
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.n_rows = n_rows if n_rows is not None else self.path.stat().st_size // self.row_bytes
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n_rows

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = None  # each process opens its own descriptor
        return state

    def __del__(self):
        self.close()

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        """Rows in the order given, as one new array (N, *row_shape); consecutive rows are read
        in one call."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.row_shape, dtype=self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"row out of range 0..{self.n_rows - 1} in {self.path}")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        flat = out.reshape(len(rows), -1).view(np.uint8)
        cuts = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            first, count = int(sorted_rows[lo]), int(hi - lo)
            data = os.pread(self._fd, count * self.row_bytes, first * self.row_bytes)
            if len(data) != count * self.row_bytes:
                raise OSError(f"{self.path} is shorter than expected (a damaged store)")
            flat[order[lo:hi]] = np.frombuffer(data, np.uint8).reshape(count, -1)
        return out


class RowWriter:
    """Appends rows to a new file; `commit()` renames it into place (nothing half-written is ever
    found under the final name)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.n_rows = 0

    def append(self, row: np.ndarray) -> int:
        self.file.write(np.ascontiguousarray(row).tobytes())
        self.n_rows += 1
        return self.n_rows - 1

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def store_path(root: Path, spec: Spec, manifest: str) -> Path:
    return root / "store" / spec.key / f"{manifest}.u8"


def open_store(root: Path, spec: Spec, manifest: str, n_rows: int) -> RowFile | None:
    """The store of (manifest, spec), or None when it is missing or has the wrong size (an
    interrupted copy, a damaged file): one stat, whatever the number of images."""
    from aigen.errors import UserError

    path = store_path(root, spec, manifest)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file():
        raise UserError(f"the preprocessing cache entry {path} is not a file; remove it "
                        "(or set AIGEN_CACHE_DIR to another folder)")
    row = RowFile(path, spec.u8_shape, np.uint8, n_rows)
    return row if st.st_size == n_rows * row.row_bytes else None


class FileIndex:
    """(path, size, mtime_ns, max_pixels) -> the outcome of reading that file, in SQLite.

    Columns: sha256, format, mode, width, height for an image; skip = the reason for a file that is
    no image (decode failures only: an unreadable file is tried again next time). Opened read-only
    (and absent if it does not exist) when `writable` is false."""

    _COLUMNS = "sha256, n_bytes, format, mode, width, height, skip"

    def __init__(self, path: Path, writable: bool):
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.pending: list[tuple] = []
        try:
            if writable:
                self.db = sqlite3.connect(path, timeout=60)
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                    "mtime_ns INTEGER, max_pixels INTEGER, sha256 TEXT, n_bytes INTEGER, "
                    "format TEXT, mode TEXT, width INTEGER, height INTEGER, skip TEXT)")
                self.db.commit()
            elif path.is_file():
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        except sqlite3.Error:
            self.db = None  # an unusable index only costs re-hashing

    def get(self, path: str, size: int, mtime_ns: int, max_pixels: int | None) -> tuple | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(
                f"SELECT {self._COLUMNS} FROM files WHERE path=? AND size=? AND mtime_ns=? "
                "AND max_pixels=?", (os.fsencode(path), size, mtime_ns, max_pixels or 0)).fetchone()
        except sqlite3.Error:
            return None
        return row

    def add(self, path: str, size: int, mtime_ns: int, max_pixels: int | None, sha256: str | None,
            n_bytes: int | None, fmt: str | None, mode: str | None, width: int | None,
            height: int | None, skip: str | None) -> None:
        from aigen.io import escape_undecodable

        # Keyed by the path's bytes: a file name need not be valid UTF-8.
        self.pending.append((os.fsencode(path), size, mtime_ns, max_pixels or 0, sha256, n_bytes,
                             fmt, mode, width, height, skip and escape_undecodable(skip)))

    def commit(self) -> None:
        if self.db is None or not self.pending:
            return
        try:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                self.pending)
            self.db.commit()
        except sqlite3.Error:
            pass  # not recorded: the next load re-hashes those files
        self.pending = []

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class Scratch:
    """The writer's scratch space: uint8 rows decoded while hashing (files the index did not know),
    in arrival order, one file per spec, so that packing the store does not decode them again.
    Deleted by `close()`."""

    def __init__(self, root: Path, specs: Sequence[Spec]):
        folder = root / "scratch"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=folder))
        self.writers = {spec.key: RowWriter(self.folder / f"{spec.key}.u8") for spec in specs}
        self.specs = {spec.key: spec for spec in specs}
        self.slots: dict[str, int] = {}  # content sha256 -> row
        self._readers: dict[str, RowFile] = {}

    def add(self, sha256: str, rows: dict[str, np.ndarray]) -> None:
        if sha256 in self.slots or set(rows) != set(self.writers):
            return
        for key, writer in self.writers.items():
            slot = writer.append(rows[key])
        self.slots[sha256] = slot

    def reader(self, spec: Spec) -> RowFile:
        if spec.key not in self._readers:
            writer = self.writers[spec.key]
            writer.file.flush()
            self._readers[spec.key] = RowFile(writer.tmp, spec.u8_shape, np.uint8, writer.n_rows)
        return self._readers[spec.key]

    def close(self) -> None:
        import shutil

        for reader in self._readers.values():
            reader.close()
        for writer in self.writers.values():
            writer.discard()
        shutil.rmtree(self.folder, ignore_errors=True)
