"""Atomic output: a reader sees either the old file (or folder), or the complete new one, never a half."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, full_disk_advice: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The file gets the user's usual permissions (0666 less the umask). A full disk while writing
    is a UserError naming the folder (see disk_full_error), with `full_disk_advice` if given.
    """
    path = Path(path)
    with full_disk_is_user_error(path.parent, full_disk_advice):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with full_disk_is_user_error(path.parent, full_disk_advice):
            tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes it private; results are not
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# torch.save reports a failed write (a full disk) as a RuntimeError from its zip writer, and numpy
# a short write as an OSError without errno ("N requested and M written"); these are the phrases.
_SHORT_WRITES = ("inline_container", "PytorchStreamWriter", "file write failed", "written")


def disk_full_error(exc: BaseException, folder: str | os.PathLike,
                    advice: str | None = None):
    """A one-line UserError naming `folder` if `exc` says a write there failed for want of space
    (OSError ENOSPC or EDQUOT; a short write from numpy or torch.save on a disk with under 1 MiB
    free); else None."""
    from aigen.errors import UserError

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on its disk" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    elif (isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno is None)) \
            and any(s in str(exc) for s in _SHORT_WRITES) and _free_bytes(folder) < 1 << 20:
        reason = "no space left on its disk"
    else:
        return None
    return UserError(f"cannot write into {folder}: {reason}; "
                     + (advice or "free some space there or choose a folder on another disk"))


@contextlib.contextmanager
def full_disk_is_user_error(folder: str | os.PathLike, advice: str | None = None) -> Iterator[None]:
    """Within the block, a write that fails for want of space is disk_full_error's UserError."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = disk_full_error(exc, folder, advice)
        if error is None:
            raise
        raise error from None


def _free_bytes(folder: str | os.PathLike) -> float:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return float("inf")


def escape_undecodable(text: str) -> str:
    """`text` with the bytes of a file name that is not valid UTF-8 written as `\\xNN`.

    Python hands such names over as lone surrogates (os.fsdecode's surrogateescape), which no
    UTF-8 file can hold; every text file aigen writes goes through this, so it stays valid UTF-8
    (e.g. the file b"caf\\xe9.jpg" is written `caf\\xe9.jpg`).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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

    On any exception (Ctrl-C and SIGTERM included) the hidden folder is removed and `path` is left
    as it was, so an interrupted run never leaves a half-written folder that looks complete. A
    hidden folder that a killed process left (its pid, in the name, is dead) is removed by the
    next call for the same `path`. `path` may be
    missing or an empty folder; with `replace=True` an existing folder is swapped out and deleted
    only once the new one is in place. Failing to create or rename is a UserError.
    """
    from aigen.errors import UserError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_leftovers(path, tag)
        # The owner's pid is in the name, so a later run can tell a leftover of a killed process.
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-{os.getpid()}-",
                                     dir=path.parent))
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_leftovers(path: str | os.PathLike, tag: str) -> list[Path]:
    """Remove the hidden folders `.<name>.<tag>-<pid>-*` and `.<name>.old-<pid>` beside `path`
    that a killed process (SIGKILL, power loss) left; the pid in the name must be dead, so a
    folder another running process is filling is never touched. Returns what was removed."""
    path = Path(path)
    removed = []
    patterns = ((f".{path.name}.{tag}-", True), (f".{path.name}.old-", False))
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        for prefix, has_suffix in patterns:
            if not entry.name.startswith(prefix):
                continue
            rest = entry.name[len(prefix):]
            pid_text = rest.split("-", 1)[0] if has_suffix else rest
            if not pid_text.isdigit() or pid_alive(int(pid_text)) or not entry.is_dir():
                continue
            if not has_suffix and not path.exists():
                continue  # killed between the two renames: the old folder is all there is

            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


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
    write_bytes(path, escape_undecodable(text).encode("utf-8"))


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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
