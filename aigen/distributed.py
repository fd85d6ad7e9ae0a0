"""Several processes, one study: `torchrun --nproc_per_node=K -m aigen study ...` (docs/scale.md).

torchrun (torch.distributed.run) starts K copies of the command with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in their environment. `session()` joins them into one
torch.distributed process group: NCCL when the study runs on CUDA (process LOCAL_RANK on GPU
LOCAL_RANK), gloo on the CPU. Without those variables (a plain `aigen study`) there is one process,
no process group, and every helper here does nothing: the single-process code path is unchanged.

Roles: rank 0 (the "main" process) alone writes files (the results folder, the lock, the cache
and store); the other ranks wait for it (`main_first`, `from_main`) and then read what it wrote.
The helpers that split work (`shard`, `gather_rows`, `sharded_map`) give each rank every K-th row,
as torch's DistributedSampler(shuffle=False) does, and put the results back in the original order.

Everything is collective: every rank must call the same helpers in the same order. A rank that
fails while the others wait is seen by them through the process group's timeout (`--dist-timeout`)
at the latest; torchrun itself stops the other processes of a machine as soon as one fails.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from aigen.errors import UserError

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_MINUTES = 30.0


@dataclass(frozen=True)
class World:
    """This process's place among the study's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" or "gloo" while a process group is up; None alone

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_WORLD = World()


def world() -> World:
    """The current World (one process, rank 0, unless inside `session`)."""
    return _WORLD


def is_main() -> bool:
    return _WORLD.is_main


def from_environment(environ=None) -> World:
    """The World torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process
    when WORLD_SIZE is unset. Inconsistent values are a UserError."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return World()
    try:
        values = {name: int(environ.get(name, "0")) for name in ENVIRONMENT}
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by "
                        "torchrun): " + ", ".join(f"{n}={environ.get(n)!r}" for n in ENVIRONMENT)
                        ) from None
    rank, size, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}, "
                        f"LOCAL_RANK={local}")
    return World(rank=rank, world_size=size, local_rank=local)


def add_arguments(group) -> None:
    """The option of `aigen study` for runs under torchrun."""
    from aigen.argtypes import positive_float

    group.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_MINUTES,
                       metavar="MIN",
                       help="under torchrun: minutes a process waits for the others (a failed or "
                            "stuck process ends the run with an error after this long; default: "
                            f"{DEFAULT_TIMEOUT_MINUTES:g}); must exceed the longest step that "
                            "the first process does alone (docs/scale.md)")


def process_device(name: str, current: World):
    """The torch device of this process: `resolve_device(name)`, and under torchrun on CUDA the
    GPU LOCAL_RANK (each process its own GPU)."""
    import torch

    from aigen.device import resolve_device

    device = resolve_device(name)
    if not current.distributed or device.type != "cuda":
        return device
    if device.index is not None and str(name).strip().lower().startswith("cuda:"):
        raise UserError(f"--device {name}: under torchrun each process uses the GPU of its "
                        "LOCAL_RANK; give --device cuda (or auto) and choose GPUs with "
                        "CUDA_VISIBLE_DEVICES")
    if current.local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {current.local_rank} has no GPU: only "
                        f"{torch.cuda.device_count()} are visible; start at most that many "
                        "processes per machine (--nproc_per_node)")
    torch.cuda.set_device(current.local_rank)
    return torch.device("cuda", current.local_rank)


@contextlib.contextmanager
def session(device_name: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
            environ=None) -> Iterator[World]:
    """The process group for the block, when torchrun started this process (else nothing): NCCL
    if the processes run on CUDA, gloo otherwise; torn down at the end. Yields the World."""
    global _WORLD

    found = from_environment(environ)
    if not found.distributed:
        yield _WORLD
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    device = process_device(device_name, found)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    try:
        dist.init_process_group(backend=backend, timeout=timeout,
                                **({"device_id": device} if backend == "nccl" else {}))
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"could not join the other processes ({backend}, rank {found.rank} of "
                        f"{found.world_size}): {str(exc).splitlines()[0]}") from None
    previous, _WORLD = _WORLD, World(found.rank, found.world_size, found.local_rank, backend)
    try:
        yield _WORLD
    except RuntimeError as exc:
        reason = _lost_contact(exc)
        if reason == "timeout":
            raise UserError(f"rank {found.rank}: another process did not answer within "
                            f"--dist-timeout {timeout_minutes:g} min (it failed or is stuck; "
                            "see its messages above)") from None
        if reason:
            raise UserError(f"rank {found.rank}: lost contact with another process of this run, "
                            f"which failed or was stopped (see its messages above): "
                            f"{str(exc).splitlines()[0][:200]}") from None
        raise
    finally:
        _WORLD = previous
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _lost_contact(exc: BaseException) -> str | None:
    """"timeout" or "closed" when `exc` is a collective that failed because another process did
    not answer in time or went away; else None (an error of this process's own)."""
    import torch.distributed as dist

    text = str(exc).lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if isinstance(exc, getattr(dist, "DistError", ())) or any(
            word in text for word in ("gloo", "nccl", "connection closed", "connection reset",
                                      "broken pipe")):
        return "closed"
    return None


# ----------------------------------------------------------------------------------------------
# Rank 0 first, the others after


def _comm_device():
    import torch

    if _WORLD.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if _WORLD.distributed:
        import torch.distributed as dist

        dist.barrier()


def from_main(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    if not _WORLD.distributed:
        return value
    import torch.distributed as dist

    box = [value if _WORLD.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (a picklable object)."""
    if not _WORLD.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * _WORLD.world_size
    dist.all_gather_object(out, value)
    return out


def main_first(fn: Callable[[], Any], *, others: bool = True,
               meanwhile: Callable[[], Any] | None = None) -> Any:
    """fn() on rank 0; then, once it succeeded, fn() on the other ranks (others=True: to read what
    rank 0 wrote) or rank 0's result handed to them (others=False). The other ranks run
    `meanwhile()` first, if given (their part of collective work that rank 0's fn() does). An
    error on rank 0 is raised on every rank as a UserError, so nobody waits for a process that
    has given up."""
    if not _WORLD.distributed:
        return fn()
    if _WORLD.is_main:
        try:
            result = fn()
        except UserError as exc:
            from_main(("error", str(exc)))
            raise
        except BaseException as exc:
            from_main(("error", f"{type(exc).__name__}: {exc}"))
            raise
        from_main(("ok", None if others else result))
        return result
    if meanwhile is not None:
        meanwhile()
    status, payload = from_main()
    if status == "error":
        raise UserError(f"the first process (rank 0) failed: {payload}")
    return fn() if others else payload


# ----------------------------------------------------------------------------------------------
# Sharding rows, and gathering them back in order


def shard(n: int) -> np.ndarray:
    """This rank's rows of range(n): every world_size-th from its rank, padded by wrapping around
    so that every rank has ceil(n / world_size) (torch's DistributedSampler, shuffle=False)."""
    size, rank = _WORLD.world_size, _WORLD.rank
    if size == 1:
        return np.arange(n, dtype=np.int64)
    total = -(-n // size) * size
    padded = np.resize(np.arange(n, dtype=np.int64), total) if n else np.zeros(0, np.int64)
    return padded[rank:total:size]


def gather_rows(local, n: int | None = None):
    """The rows every rank computed for its `shard` batch by batch, back in the original order:
    `local` is this rank's batch (a torch tensor; every rank's batch has the same shape at each
    step), the result the K batches interleaved (row j of rank r is global row K*j + r of the
    step), on every rank, as a CPU tensor; `n` trims the padding off the last step's rows."""
    if not _WORLD.distributed:
        return local if n is None else local[:n]
    import torch
    import torch.distributed as dist

    device = _comm_device()
    mine = local.to(device).contiguous()
    parts = [torch.empty_like(mine) for _ in range(_WORLD.world_size)]
    dist.all_gather(parts, mine)
    rows = torch.stack(parts, 1).reshape((-1,) + tuple(mine.shape[1:])).cpu()
    return rows if n is None else rows[:n]


def sharded_map(fn: Callable[[np.ndarray], Any], n: int, batch_size: int | None = None):
    """fn(rows) -> array of len(rows) rows, computed for range(n) with each rank doing its shard,
    the results gathered on every rank in the original order (a numpy array). `batch_size`
    splits each rank's shard into steps of that many rows (memory)."""
    import torch

    if not _WORLD.distributed or n == 0:
        return np.asarray(fn(np.arange(n, dtype=np.int64)))
    rows = shard(n)
    step = max(1, batch_size or len(rows))
    out = []
    for start in range(0, len(rows), step):
        part = np.asarray(fn(rows[start:start + step]))
        out.append(gather_rows(torch.from_numpy(np.ascontiguousarray(part))).numpy())
    return np.concatenate(out)[:n]


def all_sum(*values: float) -> tuple[float, ...]:
    """The sums over every rank of these numbers (float64)."""
    if not _WORLD.distributed:
        return tuple(float(v) for v in values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm statistics) copied into `module` on every rank."""
    if not _WORLD.distributed:
        return
    import torch.distributed as dist

    device = _comm_device()
    for tensor in module.buffers():
        moved = tensor.data if tensor.device == device else tensor.data.to(device)
        dist.broadcast(moved, src=0)
        if moved is not tensor.data:
            tensor.data.copy_(moved)


__all__ = ["World", "world", "is_main", "from_environment", "session", "add_arguments",
           "process_device", "barrier", "from_main", "gather_objects", "main_first", "shard",
           "gather_rows", "sharded_map", "all_sum", "broadcast_buffers"]
