"""The study's run folder from start to finish: claimed at the start, filled in a hidden work
folder that survives an interruption, continued with `aigen study --resume OUT`, and renamed to
OUT only when complete (docs/study.md, "Interrupted runs").

Beside OUT, while a study runs:
  .OUT.lock     the claim: an exclusive lock (flock) held by the running study, with its pid
  .OUT.partial  the work folder; its `resume/` subfolder holds the arguments, every finished
                (model, seed), and in `resume/epochs/` the last finished epoch of a backbone
                training under way; it goes away when the folder is renamed to OUT
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aigen.errors import UserError

RESUME_DIR = "resume"
EPOCHS_DIR = "epochs"
ARGUMENTS_FILE = "arguments.json"


def work_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def resume_command(out: Path) -> str:
    import shlex

    return f"aigen study --resume {shlex.quote(str(out))}"


# ----------------------------------------------------------------------------------------------
# Up-front checks and the claim


def check_renamable(out: Path) -> None:
    """A UserError now if the finished folder could not be renamed to `out` at the end: `out`
    must be creatable in a writable parent on the same filesystem, or an empty plain folder (a
    mount point cannot be renamed over)."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the folder {parent}: {exc.strerror or exc}") from None
    if out.exists():
        if os.path.ismount(out) or out.stat().st_dev != parent.stat().st_dev:
            raise UserError(f"--out {out} is a mount point (or on another filesystem than its "
                            "parent); the finished run is renamed into place, which cannot "
                            "replace a mount point: give a new folder inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {parent}, where the results folder {out.name} is to be "
                        "created")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold the claim on `out` for the block: a second study on the same --out fails at once.

    flock is released by the kernel when its holder dies, SIGKILL included, so a stale lock file
    never blocks the next run; the pid inside is only for the message.
    """
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise UserError(f"another aigen study (pid {owner}) is writing {out}; wait for it to "
                            "finish or choose another --out") from None
        try:  # the file may have been removed by its previous holder in between: lock it anew
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _has_finished_work(work: Path) -> bool:
    """Whether `work` holds a finished (model, seed) or a finished epoch worth resuming."""
    state, epochs = work / RESUME_DIR, work / RESUME_DIR / EPOCHS_DIR
    return (state.is_dir() and any(p.suffix == ".npz" for p in state.iterdir())) or \
        (epochs.is_dir() and any(p.suffix == ".pt" for p in epochs.iterdir()))


@contextlib.contextmanager
def claim(out: Path, arguments: dict[str, Any] | None, resume: bool) -> Iterator[Path]:
    """The work folder for a study writing `out`, from the start to the rename.

    A fresh run (`arguments` given) creates it and stores `arguments`; a resumed one reuses it. On
    success it becomes `out` in one rename. On failure or interruption it is kept when it holds a
    finished (model, seed), and the command to continue is printed; otherwise it is removed.
    """
    from aigen.io import _rename_folder, check_new_folder

    check_renamable(out)
    with _lock(out):
        work = work_path(out)
        if resume:
            if out.exists() and any(out.iterdir()):
                raise UserError(f"{out} is already complete; nothing to resume")
            if not (work / RESUME_DIR / ARGUMENTS_FILE).is_file():
                raise UserError(f"nothing to resume for {out}: no interrupted run ({work} does not "
                                "exist or holds no saved arguments)")
        else:
            check_new_folder(out)
            if work.exists():
                if _has_finished_work(work):
                    raise UserError(
                        f"an interrupted run of {out} is kept in {work}: continue it with "
                        f"`{resume_command(out)}`, or delete that folder to start again")
                shutil.rmtree(work)  # a killed run's leftover with nothing finished in it
            try:
                work.mkdir()
            except OSError as exc:
                raise UserError(f"cannot write the folder {work}: {exc.strerror or exc}") from None
            (work / RESUME_DIR).mkdir()
            save_arguments(work, arguments or {})
        try:
            yield work
        except BaseException:
            if work.exists() and _has_finished_work(work):
                print(f"aigen study: the finished models are kept in {work}; continue with:\n"
                      f"  {resume_command(out)}", file=sys.stderr, flush=True)
            else:
                _remove_uninterrupted(work)
            raise
        shutil.rmtree(work / RESUME_DIR, ignore_errors=True)
        _rename_folder(work, out, replace=False)


def _remove_uninterrupted(folder: Path) -> None:
    """shutil.rmtree(folder) with SIGTERM held back until it is done: a run that fails is often
    sent SIGTERM next (torchrun stops the other processes), which must not leave half a folder."""
    import signal

    held = hasattr(signal, "pthread_sigmask")
    if held:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ----------------------------------------------------------------------------------------------
# What a resumed run reads back


def save_arguments(work: Path, arguments: dict[str, Any]) -> None:
    from aigen import io

    io.write_json(work / RESUME_DIR / ARGUMENTS_FILE, arguments)


def load_arguments(out: Path) -> dict[str, Any]:
    path = work_path(out) / RESUME_DIR / ARGUMENTS_FILE
    try:
        arguments = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"nothing to resume for {out}: {work_path(out)} does not exist or holds "
                        "no saved arguments") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); delete {work_path(out)} and start "
                        "again") from None
    if not isinstance(arguments, dict):
        raise UserError(f"{path} is damaged; delete {work_path(out)} and start again")
    return arguments


def _state_file(work: Path, name: str, seed: int) -> Path:
    return work / RESUME_DIR / f"{name}_seed{seed}.npz"


def epoch_state_path(work: Path, name: str, seed: int) -> Path:
    """Where a backbone training under way keeps its last finished epoch (aigen.training)."""
    return work / RESUME_DIR / EPOCHS_DIR / f"{name}_seed{seed}.pt"


def save_run(work: Path, name: str, seed: int, history: list[dict], prob: np.ndarray,
             info: dict[str, Any] | None = None) -> None:
    """Record a finished (model, seed): its history, its predictions on every used image and the
    model's description; the weights themselves are in checkpoints/."""
    from aigen.io import atomic_path, json_default

    header = json.dumps({"history": history, "info": info or {}}, default=json_default)
    with atomic_path(_state_file(work, name, seed)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, header=np.array(header), prob=np.asarray(prob))
    epoch_state_path(work, name, seed).unlink(missing_ok=True)  # superseded by the finished run


def load_run(work: Path, name: str, seed: int) -> tuple[list[dict], np.ndarray, dict] | None:
    """(history, prob, info) of a (model, seed) an earlier attempt finished, else None."""
    path = _state_file(work, name, seed)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            prob = data["prob"]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it to train that model again") from None
    return header["history"], prob, header["info"]


STAGES_DIR = "stages"


def _stage_file(work: Path, key: str) -> Path:
    return work / RESUME_DIR / STAGES_DIR / (key.replace("/", "-").replace(":", "") + ".json")


def save_stage(work: Path, key: str, record: Any) -> None:
    """Record a finished stage's output (a JSON value), read back by a resumed run."""
    from aigen.io import write_json

    path = _stage_file(work, key)
    path.parent.mkdir(exist_ok=True)
    write_json(path, record)


def load_stage(work: Path, key: str) -> Any | None:
    """The output an earlier attempt of the run recorded for stage `key`, else None."""
    path = _stage_file(work, key)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it to run that stage again") from None


# ----------------------------------------------------------------------------------------------
# --resume and --config: the arguments of an earlier run, back on a command line

# Options that change only what is shown or logged, so a resumed run may differ in them.
DISPLAY_ONLY = ("resume", "progress", "tensorboard")
# Not carried over from a finished run's config.json: where it wrote, and how it was started.
NOT_RERUN = ("out", "resume", "config", "command")


def add_arguments(group) -> None:
    group.add_argument("--resume", metavar="OUT", default=None,
                       help="continue an interrupted or failed run whose --out was OUT, with its "
                            "saved arguments, skipping the models it finished")
    group.add_argument("--config", metavar="JSON", default=None,
                       help="rerun with the arguments recorded in a finished run's config.json "
                            "(options given here override them; --out is not taken over)")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write every model's and seed's per-epoch losses and accuracies "
                            "for TensorBoard into tensorboard/ of the results folder")


class _Parser:
    """An argparse parser for `aigen study` whose errors are UserErrors naming their source."""

    def __init__(self, add_arguments, source: str, suppress_defaults: bool = False):
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message):
                raise UserError(f"{source}: {message}")

        self.parser = Parser(prog="aigen study", add_help=False)
        add_arguments(self.parser)
        if suppress_defaults:  # then parsing yields only the options actually given
            for action in self.parser._actions:
                action.default = argparse.SUPPRESS

    def parse(self, argv: list[str]):
        return self.parser.parse_args(argv)

    def to_argv(self, arguments: dict[str, Any]) -> list[str]:
        """A command line that parses back to `arguments` (options left at default omitted)."""
        argv: list[str] = []
        for action in self.parser._actions:
            if not action.option_strings or action.dest not in arguments:
                continue
            value = arguments[action.dest]
            option = max(action.option_strings, key=len)
            if action.nargs == 0:  # a flag
                if value == action.const and value != action.default:
                    argv.append(option)
            elif value is None:
                continue
            elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
                values = value if isinstance(value, list) else [value]
                argv += [option, *map(str, values)]
            else:
                argv += [option, str(value)]
        return argv


def _given_argv(args) -> list[str]:
    """The options after `study` on the command line this run was started with."""
    argv = list(getattr(args, "_argv", []) or [])
    return argv[argv.index("study") + 1:] if "study" in argv else argv


def resolve_arguments(args, add_arguments):
    """`args` with --resume's saved arguments, --config's recorded ones or --preset's values filled
    in (options given on the command line win over --config's and the preset's; --resume allows
    only display options)."""
    from aigen.study.presets import DEFAULT_PRESET, preset_arguments

    resume, config = getattr(args, "resume", None), getattr(args, "config", None)
    preset = getattr(args, "preset", DEFAULT_PRESET)
    if resume is None and config is None and preset == DEFAULT_PRESET:
        return args
    given = _given_argv(args)
    given_dests = set(vars(_Parser(add_arguments, "aigen study", True).parse(given)))
    if resume is None and config is None:  # --preset NAME: its values, then the command line's
        parser = _Parser(add_arguments, f"--preset {preset}")
        new = parser.parse(parser.to_argv(preset_arguments(preset)) + given)
        return _with_cli_attributes(args, new)
    if config is not None and "preset" in given_dests:
        raise UserError("--config reruns a recorded run, preset values included: give --preset "
                        "without --config, or override single options")
    if resume is not None:
        if config is not None:
            raise UserError("--resume and --config contradict each other: give one")
        others = sorted(given_dests - set(DISPLAY_ONLY))
        if others:
            raise UserError("--resume continues with the interrupted run's own arguments; it "
                            f"takes no other options (given: {', '.join(others)})")
        out = Path(resume).expanduser().absolute()
        source = f"{work_path(out) / RESUME_DIR / ARGUMENTS_FILE}"
        saved = load_arguments(out)
        keep = {k: v for k, v in saved.items() if k not in DISPLAY_ONLY}
        parser = _Parser(add_arguments, source)
        new = parser.parse(parser.to_argv(keep) + given)
        new.out, new.resume = str(out), str(out)
    else:
        path = Path(config).expanduser()
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            arguments = recorded["arguments"]
            if not isinstance(arguments, dict):
                raise TypeError("arguments is not an object")
        except FileNotFoundError:
            raise UserError(f"--config {path} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise UserError(f"--config {path} is not a run's config.json ({exc})") from None
        keep = {k: v for k, v in arguments.items() if k not in NOT_RERUN}
        parser = _Parser(add_arguments, f"--config {path}")
        new = parser.parse(parser.to_argv(keep) + given)
        new.config = str(path.absolute())  # recorded; not read again
    return _with_cli_attributes(args, new)


def _with_cli_attributes(args, new):
    """`new` plus what the CLI itself set on `args` (the command, its runner, `_argv`)."""
    import argparse

    for key, value in vars(args).items():
        if key.startswith("_") or not hasattr(new, key):
            setattr(new, key, value)
    return argparse.Namespace(**vars(new))


def saved_arguments(args) -> dict[str, Any]:
    """What --resume needs to rebuild `args`: every option, as JSON values."""
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()
            if not k.startswith("_") and k not in ("resume", "command")}


def check_same_data(work: Path, manifest_sha256: str) -> None:
    """Record the data's manifest on the first attempt; a resumed run must find the same data."""
    from aigen import io

    path = work / RESUME_DIR / "data.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8")).get("manifest_sha256")
        except (OSError, ValueError, AttributeError):
            before = None
        if before != manifest_sha256:
            raise UserError(f"the data folder changed since the interrupted run started (its file "
                            f"list or contents differ), so its finished models cannot be reused; "
                            f"delete {work} and start again")
    else:
        io.write_json(path, {"manifest_sha256": manifest_sha256})


def log_history(work: Path, args, name: str, seed: int, history: list[dict]) -> None:
    """With --tensorboard, a finished (model, seed)'s per-epoch curves into work/tensorboard/."""
    if not getattr(args, "tensorboard", False):
        return
    writer_class = tensorboard_writer()
    writer = writer_class(log_dir=str(work / "tensorboard" / f"{name}_seed{seed}"))
    try:
        for h in history:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                if h.get(key) is not None:
                    writer.add_scalar(f"{name}/{key}", float(h[key]), int(h["epoch"]))
    finally:
        writer.close()


def tensorboard_writer():
    """torch's SummaryWriter, or a UserError saying how to install the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or `pip install -e .[tensorboard]`)") from None
    return SummaryWriter
