"""Training the models of the study, each for a fixed number of epochs (`train_full`: at most).

* `train_scratch`: the ScratchCNN, plain SGD on BCE (lr 0.01, 20 epochs, batch size 1).
* `train_frozen`: a new 2-class head on the frozen backbone's pooled features (Adam 1e-3, 3 epochs).
* `train_finetuned`: the backbone's last stage + a new head (Adam 1e-4, 8 epochs), from the cached
  prefix activations.
* `train_from_images`: either backbone regime from images instead of cached activations (the whole
  backbone runs on every batch), for train-time augmentation (aigen.data.augment); the same
  optimiser, epochs, seeding and batch order, so without augmentation it trains the same model.
* `train_full`: every layer of a copy of the backbone (prefix, stage) and a new head, from images:
  AdamW with a lower learning rate for earlier layers (`full_param_groups`), weight decay on the
  weights only, linear warm-up then cosine decay per step (`lr_factor`), and early stopping on
  validation (the best epoch's weights are kept). Max 12 epochs by default.

Each returns `(model, history)`; history is one dict per epoch with "epoch" (1-based),
"train_loss" and "train_acc" (running means over the epoch's batches, each batch scored by the
model *before* its update: free to compute, slightly pessimistic), "val_loss" and "val_acc" (the
model at the end of the epoch, in eval mode); `train_full`'s also "lr" (the head's learning rate
at the epoch's last update). Checkpoint policy: "last" (default) returns the last epoch's weights;
"best" returns the weights of the epoch with the highest validation accuracy (the earliest on
ties). Early stopping (`train_full`) keeps the best epoch by validation accuracy, ties broken by
the lower validation loss (`_improves`), and stops after `patience` epochs without one.

Epoch states (backbones): given `epoch_state=PATH`, every backbone training writes the trained
modules, the optimiser, the shuffling generator, torch's random state and the best epoch so far
(and whether early stopping has ended the training) to PATH at the end of every epoch
(atomically); the learning-rate schedule is a function of the update's number, so it needs no
state of its own. A later call with the same PATH and arguments continues after the last epoch
written there, ending with exactly the weights and history of an uninterrupted training. The
caller removes PATH once it has stored the finished model.

Backbones under torchrun: DistributedDataParallel over the same batches as one process (see
`_fit`); `amp` ("off", "bf16", "fp16") runs their steps under torch.autocast (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np

CHECKPOINTS = ("last", "best")
SHUFFLE_STREAM = 1  # the scratch CNN's shuffling uses default_rng([SHUFFLE_STREAM, seed])


def _check_xy(X, y, name: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(X) != len(y):
        raise ValueError(f"{name}: {len(X)} inputs but {len(y)} labels")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0 (real) or 1 (AI)")
    return y


def _check_common(epochs, batch_size, checkpoint, n_train):
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if n_train == 0:
        raise ValueError("no training samples")


def _epoch_bar(epochs: int, desc: str, progress: bool, first: int = 1):
    from tqdm import tqdm

    return tqdm(range(first, epochs + 1), desc=desc, unit="epoch", disable=not progress,
                leave=False, initial=first - 1, total=epochs)


# ----------------------------------------------------------------------------------------------
# Scratch CNN


def train_scratch(X_tr, y_tr, X_val, y_val, *, filters: int = 8, lr: float = 0.01,
                  epochs: int = 20, batch_size: int = 1, seed: int = 0, backend: str = "cython",
                  progress: bool = True, checkpoint: str = "last", dtype=np.float32,
                  init: str = "torch"):
    """Train a ScratchCNN on X (N, 1, 32, 32) in [0, 1] and labels y (1 = AI); -> (model, history).

    The model is initialised from `seed` (`init`: see ScratchCNN); each epoch visits the training set in a fresh order
    drawn from np.random.default_rng([1, seed]).
    """
    from aigen.models.scratch import ScratchCNN

    y_tr = _check_xy(X_tr, y_tr, "training set")
    y_val = _check_xy(X_val, y_val, "validation set")
    _check_common(epochs, batch_size, checkpoint, len(y_tr))
    model = ScratchCNN(filters=filters, seed=seed, backend=backend, dtype=dtype, init=init)
    X_tr = model._input(X_tr)
    y_tr = y_tr.astype(model.dtype)
    X_val = np.asarray(X_val)
    rng = np.random.default_rng([SHUFFLE_STREAM, seed])
    n = len(y_tr)
    history, best = [], None
    bar = _epoch_bar(epochs, f"scratch CNN (F={filters})", progress)
    for epoch in bar:
        order = rng.permutation(n)
        X_ep, y_ep = X_tr[order], y_tr[order]  # one copy per epoch; batches are then views
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            yb = y_ep[start:start + batch_size]
            loss, logits = model._sgd_step(X_ep[start:start + batch_size], yb, lr)
            loss_sum += loss * len(yb)
            correct += int(np.count_nonzero((logits > 0) == (yb == 1)))
        val_loss, val_acc = model.evaluate(X_val, y_val) if len(y_val) else (float("nan"),) * 2
        record = {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n,
                  "val_loss": val_loss, "val_acc": val_acc}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        if checkpoint == "best" and (best is None or val_acc > best[0]):
            best = (val_acc, {k: v.copy() for k, v in model.params.items()})
    if checkpoint == "best" and best is not None:
        model.set_params(best[1])
    return model, history


# ----------------------------------------------------------------------------------------------
# Backbones


@contextlib.contextmanager
def deterministic_torch(seed: int):
    """Seeded global torch RNG, deterministic algorithms where torch has them; all restored after."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn_flags


def _labels_tensor(y):
    import torch

    return torch.from_numpy(np.asarray(y, dtype=np.int64).reshape(-1))


def _evaluate(logits_fn, A, y, batch_size: int, device, amp: str = "off") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits_fn over A in batches (no grad). Under torchrun
    each process scores every K-th row and the sums are added up (aigen.distributed)."""
    import torch
    import torch.nn.functional as F

    from aigen import distributed

    if len(y) == 0:
        return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), autocast(device, amp):
        if not distributed.world().distributed:
            for start in range(0, len(y), batch_size):
                yb = y[start:start + batch_size].to(device)
                logits = logits_fn(A[start:start + batch_size].to(device))
                loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
            return loss_sum / len(y), correct / len(y)
        world = distributed.world()
        rows = torch.arange(world.rank, len(y), world.world_size)
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            yb = y[idx].to(device)
            logits = logits_fn(_to_device(A[idx], device))
            loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    loss_sum, correct = distributed.all_sum(loss_sum, correct)
    return loss_sum / len(y), correct / len(y)


# ----------------------------------------------------------------------------------------------
# Mixed precision (--amp) and host-to-GPU copies

AMP_CHOICES = ("off", "bf16", "fp16")


def check_amp(amp: str, device) -> None:
    """A UserError when `amp` cannot run on `device`: fp16 needs CUDA (its loss scaling, torch's
    GradScaler, is a CUDA feature here); bf16 needs a CPU or a GPU with bfloat16 support."""
    import torch

    from aigen.errors import UserError

    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    kind = torch.device(device).type
    if amp == "fp16" and kind != "cuda":
        raise UserError(f"--amp fp16 needs a CUDA device (the run uses {kind}); use --amp bf16 "
                        "on the CPU, or --amp off")
    if amp == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16 or off")
    if amp != "off" and kind not in ("cpu", "cuda"):
        raise UserError(f"--amp {amp} is supported on the CPU and CUDA only, not {kind}")


def autocast(device, amp: str):
    """torch.autocast to bfloat16 / float16 for --amp bf16 / fp16; nothing for "off"."""
    import torch

    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _to_device(batch, device):
    """`batch` on `device`; on CUDA copied from pinned memory, without blocking."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


# ----------------------------------------------------------------------------------------------
# The backbones' training loop


EPOCH_STATE_FORMAT = "aigen-epoch-state"
# 2: `best` became {"val_acc", "val_loss", "epoch", "modules"} (was (val_acc, modules)) and
# "stopped" was added, for early stopping; a version-1 state is not read (the training restarts).
EPOCH_STATE_VERSION = 2


def _save_epoch_state(path, state: dict) -> None:
    """`state` (tensors, numbers, lists and dicts of them) written atomically to `path`."""
    import io

    import torch

    from aigen.io import write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def _load_epoch_state(path, signature: dict) -> dict | None:
    """The epoch state at `path` if it was written by a training with the same `signature`; None
    when there is none (or one of another training, which is then started afresh)."""
    from pathlib import Path

    import torch

    from aigen.errors import UserError

    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise UserError(f"{path} is damaged ({str(exc).splitlines()[0][:200]}); delete it to "
                        "train that model again from its first epoch") from None
    if not isinstance(state, dict) or state.get("format") != EPOCH_STATE_FORMAT \
            or state.get("signature") != signature:
        return None
    return state


def _parallel(modules, forward, device):
    """The trained modules as one DistributedDataParallel module calling `forward` (under
    torchrun): each step's gradients are averaged over the processes."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class Trained(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = torch.nn.ModuleList(modules)

        def forward(self, batch):
            return forward(batch)

    device = torch.device(device)
    return DistributedDataParallel(Trained(), device_ids=[device] if device.type == "cuda"
                                   else None)


def _train_batch(A, idx, epoch: int):
    """Rows `idx` of the training set A for epoch `epoch`: augmented ones when A augments."""
    return A.augmented(idx, epoch) if hasattr(A, "augmented") else A[idx]


def _improves(record: dict, best: dict | None) -> bool:
    """Whether epoch `record` beats `best` for early stopping: a higher validation accuracy, or
    the same one with a lower validation loss (with a few hundred validation images accuracy
    moves in coarse steps and ties often; the loss then tells the better-fitted model)."""
    if best is None:
        return True
    return record["val_acc"] > best["val_acc"] or (record["val_acc"] == best["val_acc"]
                                                   and record["val_loss"] < best["val_loss"])


def best_epoch(history: list[dict]) -> int:
    """The epoch early stopping keeps (`_improves` over `history`, the earliest on full ties)."""
    best = None
    for record in history:
        if _improves(record, best):
            best = record
    return int(best["epoch"])


def _fit(modules, forward, A_tr, y_tr, A_val, y_val, *, epochs, lr, batch_size, seed, device,
         progress, checkpoint, desc, epoch_state=None, amp="off", optimiser=None,
         schedule=None, patience=None, recipe=None):
    """Adam on cross-entropy over seeded shuffled batches; -> history (modules trained in place).

    `modules` are the trained nn.Modules (set to train mode for the updates and to eval mode for
    validation); `forward(batch)` maps a batch of A to logits. With `epoch_state` (a path), the
    training state is written there after every epoch and read back first (module docstring).

    The update rule can be replaced: `optimiser()` builds the optimiser (default: Adam at `lr`
    over the modules' trainable parameters); `schedule(step)` is the factor applied to each
    parameter group's "base_lr" at update `step` (0-based, over the whole training: epochs x
    batches per epoch; the history then records the first group's lr); `patience` stops the
    training after that many epochs without a better validation result (`_improves`) and keeps
    the best epoch's weights whatever `checkpoint` says; `recipe` (a dict of plain values
    describing these) is part of the epoch state's signature.

    Under torchrun (K processes, aigen.distributed) every process draws the same shuffled order
    and takes every K-th row of each batch of `batch_size`; the modules are wrapped in
    DistributedDataParallel and each process's summed loss is scaled by K / len(batch), so that
    the averaged gradient is the one of the whole batch, as in one process (up to the order of
    the float additions, and BatchNorm, which normalises with each process's share of the batch).
    A training set with an `augmented(index, epoch)` method (aigen.data.augment.AugmentedImages)
    gives its batches through it, so each epoch sees its own augmentation.
    """
    import torch
    import torch.nn.functional as F

    from aigen import distributed

    world = distributed.world()
    K = world.world_size
    y_tr, y_val = _labels_tensor(y_tr), _labels_tensor(y_val)
    if patience is not None and len(y_val) == 0:
        raise ValueError("early stopping needs a validation set")
    if optimiser is None:
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=lr)
    else:
        optimiser = optimiser()
    if schedule is not None:
        for group in optimiser.param_groups:
            group.setdefault("base_lr", group["lr"])
    keep_best = checkpoint == "best" or patience is not None
    generator = torch.Generator().manual_seed(seed)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    n = len(y_tr)
    steps_per_epoch = math.ceil(n / batch_size)
    history, best, stopped = [], None, False  # best: {"val_acc", "val_loss", "epoch", "modules"}
    cuda = torch.device(device).type == "cuda"
    signature = {"version": EPOCH_STATE_VERSION, "desc": desc, "epochs": epochs, "lr": lr,
                 "batch_size": batch_size, "seed": seed, "checkpoint": checkpoint,
                 "n_train": n, "n_val": len(y_val), "world_size": K, "amp": amp,
                 "shapes": [[k, list(v.shape)] for m in modules for k, v in m.state_dict().items()]}
    if recipe is not None:
        signature["recipe"] = dict(recipe)
    first = 1
    state = _load_epoch_state(epoch_state, signature)
    if state is not None:  # continue where an interrupted training stopped
        for m, saved in zip(modules, state["modules"]):
            m.load_state_dict(saved)
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"][world.rank])
        if cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][world.rank], device)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        best = dict(state["best"]) if state["best"] else None
        stopped = bool(state.get("stopped", False))
        first = state["epoch"] + 1
    step_forward = _parallel(modules, forward, device) if K > 1 else forward
    # Counted in batches: an epoch of a large training set can take minutes.
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="batch", disable=not progress, leave=False,
               total=epochs * steps_per_epoch, initial=(first - 1) * steps_per_epoch)
    for epoch in range(first, epochs + 1):
        bar.set_description(f"{desc} (epoch {epoch}/{epochs})")
        if stopped:  # early stopping ended the training before the interruption
            break
        for m in modules:
            m.train()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for b, start in enumerate(range(0, n, batch_size)):
            if schedule is not None:  # the learning rates of this update
                factor = schedule((epoch - 1) * steps_per_epoch + b)
                for group in optimiser.param_groups:
                    group["lr"] = group["base_lr"] * factor
            idx = order[start:start + batch_size]
            if K == 1:
                yb = y_tr[idx].to(device)
                with autocast(device, amp):
                    batch = _train_batch(A_tr, idx, epoch)
                    logits = forward(_to_device(batch, device))
                    loss = F.cross_entropy(logits.float(), yb)
                batch_loss = float(loss.detach()) * len(idx)
            else:  # this process's share: rows rank, rank + K, ... of the batch
                mine, weight = idx[world.rank::K], K / len(idx)
                if len(mine) == 0:  # a last batch smaller than K: a row that counts for nothing
                    mine, weight = idx[:1], 0.0
                yb = y_tr[mine].to(device)
                with autocast(device, amp):
                    logits = step_forward(_to_device(_train_batch(A_tr, mine, epoch), device))
                    summed = F.cross_entropy(logits.float(), yb, reduction="sum")
                    loss = summed * weight
                batch_loss = float(summed.detach()) if weight else 0.0
            optimiser.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimiser.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            loss_sum += batch_loss
            if K == 1 or weight:
                correct += int((logits.detach().argmax(1) == yb).sum())
            bar.update(1)
        if K > 1:  # every process ends the epoch with the first one's BatchNorm statistics
            distributed.broadcast_buffers(step_forward.module)
            loss_sum, correct = distributed.all_sum(loss_sum, correct)
        for m in modules:
            m.eval()
        val_loss, val_acc = _evaluate(forward, A_val, y_val, max(batch_size, 64), device, amp)
        record = {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n,
                  "val_loss": val_loss, "val_acc": val_acc}
        if schedule is not None:
            record["lr"] = optimiser.param_groups[0]["lr"]
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        better = _improves(record, best) if patience is not None else \
            best is None or val_acc > best["val_acc"]
        if keep_best and better:
            best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch,
                    "modules": [copy.deepcopy(m.state_dict()) for m in modules]}
        # Every process decides alike: the validation figures are summed over all of them.
        stopped = patience is not None and epoch - best["epoch"] >= patience
        if epoch_state is not None:
            rng = distributed.gather_objects(torch.get_rng_state())
            cuda_rng = distributed.gather_objects(torch.cuda.get_rng_state(device)) if cuda \
                else None
            if world.is_main:
                _save_epoch_state(epoch_state, {
                    "format": EPOCH_STATE_FORMAT, "signature": signature, "epoch": epoch,
                    "modules": [m.state_dict() for m in modules],
                    "optimiser": optimiser.state_dict(), "generator": generator.get_state(),
                    "torch_rng": rng, "cuda_rng": cuda_rng,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "history": history, "best": best, "stopped": stopped})
    bar.close()
    if keep_best and best is not None:
        for m, saved in zip(modules, best["modules"]):
            m.load_state_dict(saved)
    for m in modules:
        m.eval()
    return history


def _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs, batch_size, checkpoint, device, amp):
    from aigen.models.backbones import _as_device, _as_tensor

    backbone.check_has_weights()
    y_tr = _check_xy(A_tr, y_tr, "training set")
    y_val = _check_xy(A_val, y_val, "validation set")
    _check_common(epochs, batch_size, checkpoint, len(y_tr))
    device = _as_device(device)
    check_amp(amp, device)
    return _as_tensor(A_tr), y_tr, _as_tensor(A_val), y_val, device


def train_frozen(backbone, A_tr, y_tr, A_val, y_val, *, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 32, seed: int = 0, device="cpu", progress: bool = True,
                 checkpoint: str = "last", epoch_state=None, amp: str = "off"):
    """Frozen regime: only a new 2-class head is trained, on the frozen backbone's pooled features.

    A_tr / A_val are the backbone's prefix activations (N, C, H, W), or the pooled features
    (N, n_features) from `backbone.pooled_features(A)` (to compute those once for several seeds).
    Returns (BackboneClassifier, history).
    """
    from aigen.models.backbones import BackboneClassifier, new_head

    A_tr, y_tr, A_val, y_val, device = _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs,
                                                batch_size, checkpoint, device, amp)
    # Nothing before the head trains, so its input is computed once, not once per epoch.
    F_tr = A_tr if A_tr.ndim == 2 else backbone.pooled_features(A_tr, device)
    F_val = A_val if A_val.ndim == 2 else backbone.pooled_features(A_val, device)
    head = new_head(backbone.n_features, seed).to(device)
    with deterministic_torch(seed):
        history = _fit([head], head, F_tr, y_tr, F_val, y_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} frozen",
                       epoch_state=epoch_state, amp=amp)
    return BackboneClassifier(backbone, "frozen", backbone.stage, head, device=device), history


def train_finetuned(backbone, A_tr, y_tr, A_val, y_val, *, epochs: int = 8, lr: float = 1e-4,
                    batch_size: int = 32, seed: int = 0, device="cpu", progress: bool = True,
                    checkpoint: str = "last", epoch_state=None, amp: str = "off"):
    """Fine-tuned regime: a copy of the backbone's stage and a new head train together on the
    prefix activations A (N, C, H, W). The stage's BatchNorm layers train normally (batch
    statistics, running averages updated); the prefix is untouched. Returns (BackboneClassifier,
    history); `backbone` itself is left unchanged.
    """
    from aigen.models.backbones import BackboneClassifier, new_head, pool, to_model_layout

    A_tr, y_tr, A_val, y_val, device = _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs,
                                                batch_size, checkpoint, device, amp)
    if A_tr.ndim != 4:
        raise ValueError("fine-tuning needs the prefix activations (N, C, H, W), not pooled features")
    stage = copy.deepcopy(backbone.stage).to(device)
    if device.type == "cuda":  # weights in the inputs' layout (to_model_layout): cuDNN's fast path
        import torch

        stage = stage.to(memory_format=torch.channels_last)
    for param in stage.parameters():
        param.requires_grad_(True)
    head = new_head(backbone.n_features, seed).to(device)

    def forward(batch):
        return head(pool(stage(to_model_layout(batch, device))))

    with deterministic_torch(seed):
        history = _fit([stage, head], forward, A_tr, y_tr, A_val, y_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} fine-tuned",
                       epoch_state=epoch_state, amp=amp)
    for param in stage.parameters():
        param.requires_grad_(False)
    return BackboneClassifier(backbone, "finetuned", stage, head, device=device), history


VIEW_CHUNK = 64  # views run through the network together when a batch holds several per image


def _views_averaged(forward):
    """`forward` for batches that may hold several views of each image, (N, V, C, H, W): the
    views' class probabilities averaged, returned as log-probabilities (what cross-entropy and
    argmax take as logits). Such batches are only scored (validation, no gradients), VIEW_CHUNK
    views at a time. A batch (N, C, H, W) goes to `forward` unchanged."""
    import torch

    def wrapped(batch):
        if batch.dim() != 5:
            return forward(batch)
        n, v = batch.shape[:2]
        flat = batch.flatten(0, 1)
        logits = torch.cat([forward(flat[i:i + VIEW_CHUNK]).float()
                            for i in range(0, len(flat), VIEW_CHUNK)])
        return torch.logsumexp(torch.log_softmax(logits, 1).reshape(n, v, -1), 1) - math.log(v)

    return wrapped


def train_from_images(backbone, X_tr, y_tr, X_val, y_val, *, regime: str, epochs: int,
                      lr: float, batch_size: int = 32, seed: int = 0, device="cpu",
                      progress: bool = True, checkpoint: str = "last", epoch_state=None,
                      amp: str = "off"):
    """Either regime ("frozen" or "finetuned") trained from model-input images rather than
    cached activations: every batch runs the frozen prefix (and, frozen, the pretrained stage) in
    eval mode without gradients, then the trained part. X_tr / X_val give float32 (N, 3, H, W)
    batches when indexed (aigen.data.augment.AugmentedImages; X_tr's `augmented(index, epoch)`,
    if present, gives the training batches); a batch (N, V, 3, H, W) holds V views of each image
    (the fixed windows of the crop policy), scored by their averaged probabilities. Same head initialisation, optimiser, seeded batch
    order and checkpoint policy as train_frozen / train_finetuned, so without augmentation the
    result matches theirs up to floating-point summation order; `epoch_state` and `amp` as there.
    Returns (BackboneClassifier, history).
    """
    import torch

    from aigen.models.backbones import (BackboneClassifier, _as_device, new_head, pool,
                                        to_model_layout)

    if regime not in ("frozen", "finetuned"):
        raise ValueError(f"regime must be frozen or finetuned, got {regime!r}")
    y_tr = _check_xy(X_tr, y_tr, "training set")
    y_val = _check_xy(X_val, y_val, "validation set")
    _check_common(epochs, batch_size, checkpoint, len(y_tr))
    device = _as_device(device)
    check_amp(amp, device)
    prefix = backbone.prefix.to(device).eval()
    head = new_head(backbone.n_features, seed).to(device)
    if regime == "frozen":
        stage = backbone.stage.to(device).eval()
        modules = [head]

        def forward(batch):
            with torch.no_grad():
                features = pool(stage(prefix(to_model_layout(batch, device))))
            return head(features)
    else:
        stage = copy.deepcopy(backbone.stage).to(device)
        for param in stage.parameters():
            param.requires_grad_(True)
        modules = [stage, head]

        def forward(batch):
            with torch.no_grad():
                activations = prefix(to_model_layout(batch, device))
            return head(pool(stage(activations)))

    with deterministic_torch(seed):
        history = _fit(modules, _views_averaged(forward), X_tr, y_tr, X_val, y_val,
                       epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} {regime} (from images)",
                       epoch_state=epoch_state, amp=amp)
    if regime == "finetuned":
        for param in stage.parameters():
            param.requires_grad_(False)
    return BackboneClassifier(backbone, regime, stage, head, device=device), history


# ----------------------------------------------------------------------------------------------
# The full regime: every layer trained

# Defaults of `train_full` and of `aigen study --full-*` (docs/models.md says why these).
FULL_DEFAULTS = {"epochs": 12, "lr": 3e-4, "lr_decay": 0.3, "weight_decay": 0.05, "warmup": 1.0,
                 "patience": 3}
# The momentum of the copied BatchNorm layers' running averages in the full regime (torch's
# default). EfficientNet-Lite's own is 0.01: after an epoch of ~21 updates its running statistics
# would still be ~81% ImageNet's, and early stopping compares epochs in eval mode, by them.
FULL_BN_MOMENTUM = 0.1


def set_bn_momentum(module, momentum: float) -> None:
    """Every BatchNorm layer of `module` updates its running averages with `momentum`."""
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor of every base learning rate at update `step` (0-based) of `total_steps`: linear
    warm-up, (step + 1) / warmup_steps, over the first `warmup_steps` updates, then cosine decay
    from 1 towards 0 over the rest (1 at the first update after the warm-up; the last update's
    factor is small but not 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = total_steps - warmup_steps
    if span <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


def full_param_groups(prefix, stage, head, *, lr: float, lr_decay: float,
                      weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the full regime: the head at `lr`, the stage at lr x lr_decay,
    the prefix at lr x lr_decay^2; within each, the weights (convolution and linear kernels)
    decay by `weight_decay` and the 1-D parameters (biases, BatchNorm scales and shifts) do not.
    Each group carries its "name" and its "base_lr" (the schedule's 1.0); empty groups are left
    out."""
    groups = []
    for name, module, scale in (("head", head, 1.0), ("stage", stage, lr_decay),
                                ("prefix", prefix, lr_decay ** 2)):
        params = [p for p in module.parameters() if p.requires_grad]
        for suffix, chosen, decay in (("", [p for p in params if p.ndim > 1], weight_decay),
                                      (" (no decay)", [p for p in params if p.ndim <= 1], 0.0)):
            if chosen:
                groups.append({"params": chosen, "name": name + suffix, "lr": lr * scale,
                               "base_lr": lr * scale, "weight_decay": decay})
    return groups


def train_full(backbone, X_tr, y_tr, X_val, y_val, *, epochs: int = FULL_DEFAULTS["epochs"],
               lr: float = FULL_DEFAULTS["lr"], lr_decay: float = FULL_DEFAULTS["lr_decay"],
               weight_decay: float = FULL_DEFAULTS["weight_decay"],
               warmup: float = FULL_DEFAULTS["warmup"], patience: int = FULL_DEFAULTS["patience"],
               batch_size: int = 32, seed: int = 0, device="cpu", progress: bool = True,
               checkpoint: str = "best", epoch_state=None, amp: str = "off"):
    """Full regime: a copy of the whole backbone (prefix and stage) and a new head, every
    parameter trained from model-input images (X_tr / X_val as for `train_from_images`; X_tr's
    `augmented(index, epoch)`, if present, gives the training batches). BatchNorm layers train
    normally (batch statistics, running averages updated, with momentum FULL_BN_MOMENTUM whatever
    the backbone's own).

    AdamW (`full_param_groups`: lr for the head, lr x lr_decay for the stage, lr x lr_decay^2
    for the prefix; weight decay on the weights only), learning rates following `lr_factor` per
    update with `warmup` epochs of warm-up and the cosine over `epochs`; early stopping after
    `patience` epochs without a better validation result, the best epoch's weights kept
    (`best_epoch(history)` tells which). Same head initialisation, seeded batch order,
    `epoch_state` and `amp` as the other regimes; `checkpoint` can only be "best" (taken so that
    every regime is called alike). Returns (BackboneClassifier, history); `backbone` itself is
    left unchanged.
    """
    import torch

    from aigen.models.backbones import (BackboneClassifier, _as_device, new_head, pool,
                                        to_model_layout)

    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
    if weight_decay < 0 or warmup < 0:
        raise ValueError("weight_decay and warmup must be >= 0")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if checkpoint != "best":
        raise ValueError("the full regime keeps its best epoch (early stopping): checkpoint "
                         f"must be 'best', got {checkpoint!r}")
    backbone.check_has_weights()
    y_tr = _check_xy(X_tr, y_tr, "training set")
    y_val = _check_xy(X_val, y_val, "validation set")
    _check_common(epochs, batch_size, "best", len(y_tr))
    device = _as_device(device)
    check_amp(amp, device)
    # Arrays become tensors; datasets (AugmentedImages) give tensors per batch.
    X_tr, X_val = (torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
                   if isinstance(X, np.ndarray) else X for X in (X_tr, X_val))
    prefix = copy.deepcopy(backbone.prefix).to(device)
    stage = copy.deepcopy(backbone.stage).to(device)
    if device.type == "cuda":  # weights in the inputs' layout (to_model_layout): cuDNN's fast path
        prefix = prefix.to(memory_format=torch.channels_last)
        stage = stage.to(memory_format=torch.channels_last)
    for param in list(prefix.parameters()) + list(stage.parameters()):
        param.requires_grad_(True)
    for module in (prefix, stage):
        set_bn_momentum(module, FULL_BN_MOMENTUM)
    head = new_head(backbone.n_features, seed).to(device)

    def forward(batch):
        return head(pool(stage(prefix(to_model_layout(batch, device)))))

    steps_per_epoch = math.ceil(len(y_tr) / batch_size)
    total = epochs * steps_per_epoch
    warmup_steps = min(round(warmup * steps_per_epoch), total)
    recipe = {"optimiser": "AdamW", "lr_decay": lr_decay, "weight_decay": weight_decay,
              "warmup": warmup, "patience": patience, "bn_momentum": FULL_BN_MOMENTUM}
    with deterministic_torch(seed):
        history = _fit(
            [prefix, stage, head], _views_averaged(forward), X_tr, y_tr, X_val, y_val,
            epochs=epochs, lr=lr,
            batch_size=batch_size, seed=seed, device=device, progress=progress,
            checkpoint="best", desc=f"{backbone.name} full", epoch_state=epoch_state, amp=amp,
            optimiser=lambda: torch.optim.AdamW(full_param_groups(
                prefix, stage, head, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay)),
            schedule=lambda step: lr_factor(step, warmup_steps, total), patience=patience,
            recipe=recipe)
    for param in list(prefix.parameters()) + list(stage.parameters()):
        param.requires_grad_(False)
    return BackboneClassifier(backbone, "full", stage, head, device=device, prefix=prefix), history
