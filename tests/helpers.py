"""Small helpers shared by several test files."""

import contextlib
import csv
import io
from pathlib import Path

from aigen import cli
from aigen.training import _save_epoch_state as _SAVE_EPOCH_STATE

# ../shared beside the checkout (real data for the tests marked `shared`; absent -> they skip).
SHARED = Path(__file__).resolve().parents[2] / "shared"


def run_cli(argv):
    """`aigen ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def run_tiny_study(data, out, cache, *options):
    """`aigen study --data DATA --out OUT OPTIONS` on tiny generated data: offline, its own cache
    folder, on the CPU with one loader worker, no progress bars and no metadata audit (random
    forests, tested with the quick study); asserts it succeeds and returns its stdout."""
    import pytest

    from aigen.data import explore

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGEN_CACHE_DIR", str(cache))
        mp.setenv("AIGEN_OFFLINE", "1")
        mp.setattr(explore, "shortcut_audit", lambda *a, **k: {})
        code, stdout, stderr = run_cli(["study", "--data", str(data), "--out", str(out),
                                        "--device", "cpu", "--workers", "1", "--no-progress",
                                        *options])
    assert code == 0, stderr
    return stdout


def interrupt_training_after(monkeypatch, epoch):
    """Make a backbone training stop (KeyboardInterrupt) right after writing epoch `epoch`'s
    state (None: never); returns the list of epochs whose state gets written."""
    from aigen import training

    real_save, written = _SAVE_EPOCH_STATE, []  # the real one, even when called twice in a test

    def save(path, state):
        real_save(path, state)
        written.append(state["epoch"])
        if state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch_state", save)
    return written


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
    from aigen.study.stages import train

    def trained_again(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(train, "fit_scratch", trained_again)
    monkeypatch.setattr(train, "train_backbone", trained_again)


def every_progress_update(monkeypatch):
    """From now on, tqdm bars created with `from tqdm import tqdm` draw every update (not at most
    one per 0.1 s), so a test can read each step from stderr."""
    import functools

    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, mininterval=0, miniters=1))
