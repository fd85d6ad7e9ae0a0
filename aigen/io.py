"""Atomic output: a reader sees either the old file (or folder), or the complete new one, never a half."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def new_results_folder(prefix: str = "", suffix: str = "") -> Path:
    """results/<prefix><YYYYmmdd-HHMMSS><suffix> under the current folder, with -2, -3, ... if
    taken."""
    import datetime

    stamp = prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + suffix
    base = Path.cwd() / "results" / stamp
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{stamp}-{k}")
    return path


def refuse_inside(out: str | os.PathLike, data_root: str | os.PathLike) -> None:
    """A UserError when the output folder `out` is (inside) the data folder."""
    from aigen.errors import UserError

    if Path(out).resolve().is_relative_to(Path(data_root).resolve()):
        raise UserError(f"--out {out} is inside the data folder {data_root}; choose another "
                        "(aigen never writes into a data folder)")


def check_new_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as an absolute Path, if it does not exist or is an empty folder; else a UserError.

    Results are never written over anything, so nothing a user had there can be lost.
    """
    from aigen.errors import UserError

    path = Path(path).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{option} {path} exists and is not a folder")
        if any(path.iterdir()):
            raise UserError(f"{option} {path} is a non-empty folder; choose a new or empty folder "
                            "(results are never overwritten)")
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, tag: str = "partial",
                  replace: bool = False) -> Iterator[Path]:
    """Yield a hidden folder beside `path` to fill; on success it becomes `path` in one rename.

    On any exception (Ctrl-C included) the hidden folder is removed and `path` is left as it was,
    so an interrupted run never leaves a half-written folder that looks complete. `path` may be
    missing or an empty folder; with `replace=True` an existing folder is swapped out and deleted
    only once the new one is in place. Failing to create or rename is a UserError.
    """
    from aigen.errors import UserError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; an output folder is not
    except OSError as exc:
        raise UserError(f"cannot write the folder {path}: {exc.strerror or exc}") from None
    try:
        yield work
        _rename_folder(work, path, replace)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _rename_folder(work: Path, path: Path, replace: bool) -> None:
    from aigen.errors import UserError

    old = None
    try:
        if path.exists():
            if replace:
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
            else:
                path.rmdir()  # only an empty folder; anything else fails loudly
        os.replace(work, path)
    except OSError as exc:
        if old is not None and not path.exists():  # put the previous folder back
            os.replace(old, path)
        raise UserError(f"could not rename the finished folder {work} to {path}: "
                        f"{exc.strerror or exc}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths appear in results; store them as plain JSON values.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
