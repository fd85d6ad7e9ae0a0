"""Small helpers shared by several test files."""

import contextlib
import csv
import io
from pathlib import Path

from aigen import cli


def run_cli(argv):
    """`aigen ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def snapshot(root: Path) -> dict:
    """Every entry under root with its bytes and mtime: any write would change it."""
    entries = {".": root.stat().st_mtime_ns}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        entries[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size,
                                                   p.read_bytes() if p.is_file() else None)
    return entries


def forbid_training(monkeypatch):
    """From now on, training any model of a study fails the test (for resumed runs that must
    read every finished model back)."""
    from aigen.study import driver

    def trained_again(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(driver.Study, "_fit_scratch", trained_again)
    monkeypatch.setattr(driver.Study, "_train_backbone", trained_again)
