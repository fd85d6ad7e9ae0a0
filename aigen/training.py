"""Training the three models of the study, each for a fixed number of epochs.

* `train_scratch`: the ScratchCNN, plain SGD on BCE (lr 0.01, 20 epochs, batch size 1).
* `train_frozen`: a new 2-class head on the frozen backbone's pooled features (Adam 1e-3, 3 epochs).
* `train_finetuned`: the backbone's last stage + a new head (Adam 1e-4, 8 epochs), from the cached
  prefix activations.
* `train_from_images`: either backbone regime from images instead of cached activations (the whole
  backbone runs on every batch), for train-time augmentation (aigen.data.augment); the same
  optimiser, epochs, seeding and batch order, so without augmentation it trains the same model.

Each returns `(model, history)`; history is one dict per epoch with "epoch" (1-based),
"train_loss" and "train_acc" (running means over the epoch's batches, each batch scored by the
model *before* its update: free to compute, slightly pessimistic), "val_loss" and "val_acc" (the
model at the end of the epoch, in eval mode). Checkpoint policy: "last" (default) returns the
last epoch's weights; "best" returns the weights of the epoch with the highest validation accuracy
(the earliest on ties).
"""

from __future__ import annotations

import contextlib
import copy

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


def _epoch_bar(epochs: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)


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


def _evaluate(logits_fn, A, y, batch_size: int, device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits_fn over A in batches (no grad)."""
    import torch
    import torch.nn.functional as F

    if len(y) == 0:
        return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            yb = y[start:start + batch_size].to(device)
            logits = logits_fn(A[start:start + batch_size].to(device))
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def _fit(modules, forward, A_tr, y_tr, A_val, y_val, *, epochs, lr, batch_size, seed, device,
         progress, checkpoint, desc):
    """Adam on cross-entropy over seeded shuffled batches; -> history (modules trained in place).

    `modules` are the trained nn.Modules (set to train mode for the updates and to eval mode for
    validation); `forward(batch)` maps a batch of A to logits. A training set with an
    `augmented(index, epoch)` method (aigen.data.augment.AugmentedImages) gives its batches
    through it, so each epoch sees its own augmentation.
    """
    import torch
    import torch.nn.functional as F

    y_tr, y_val = _labels_tensor(y_tr), _labels_tensor(y_val)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(y_tr)
    history, best = [], None
    bar = _epoch_bar(epochs, desc, progress)
    for epoch in bar:
        for m in modules:
            m.train()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yb = y_tr[idx].to(device)
            batch = A_tr.augmented(idx, epoch) if hasattr(A_tr, "augmented") else A_tr[idx]
            logits = forward(batch.to(device))
            loss = F.cross_entropy(logits, yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
        for m in modules:
            m.eval()
        val_loss, val_acc = _evaluate(forward, A_val, y_val, max(batch_size, 64), device)
        record = {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n,
                  "val_loss": val_loss, "val_acc": val_acc}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        if checkpoint == "best" and (best is None or val_acc > best[0]):
            best = (val_acc, [copy.deepcopy(m.state_dict()) for m in modules])
    if checkpoint == "best" and best is not None:
        for m, state in zip(modules, best[1]):
            m.load_state_dict(state)
    for m in modules:
        m.eval()
    return history


def _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs, batch_size, checkpoint, device):
    from aigen.models.backbones import _as_device, _as_tensor

    y_tr = _check_xy(A_tr, y_tr, "training set")
    y_val = _check_xy(A_val, y_val, "validation set")
    _check_common(epochs, batch_size, checkpoint, len(y_tr))
    return _as_tensor(A_tr), y_tr, _as_tensor(A_val), y_val, _as_device(device)


def train_frozen(backbone, A_tr, y_tr, A_val, y_val, *, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 32, seed: int = 0, device="cpu", progress: bool = True,
                 checkpoint: str = "last"):
    """Frozen regime: only a new 2-class head is trained, on the frozen backbone's pooled features.

    A_tr / A_val are the backbone's prefix activations (N, C, H, W), or the pooled features
    (N, n_features) from `backbone.pooled_features(A)` (to compute those once for several seeds).
    Returns (BackboneClassifier, history).
    """
    from aigen.models.backbones import BackboneClassifier, new_head

    A_tr, y_tr, A_val, y_val, device = _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs,
                                                batch_size, checkpoint, device)
    # Nothing before the head trains, so its input is computed once, not once per epoch.
    F_tr = A_tr if A_tr.ndim == 2 else backbone.pooled_features(A_tr, device)
    F_val = A_val if A_val.ndim == 2 else backbone.pooled_features(A_val, device)
    head = new_head(backbone.n_features, seed).to(device)
    with deterministic_torch(seed):
        history = _fit([head], head, F_tr, y_tr, F_val, y_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} frozen")
    return BackboneClassifier(backbone, "frozen", backbone.stage, head, device=device), history


def train_finetuned(backbone, A_tr, y_tr, A_val, y_val, *, epochs: int = 8, lr: float = 1e-4,
                    batch_size: int = 32, seed: int = 0, device="cpu", progress: bool = True,
                    checkpoint: str = "last"):
    """Fine-tuned regime: a copy of the backbone's stage and a new head train together on the
    prefix activations A (N, C, H, W). The stage's BatchNorm layers train normally (batch
    statistics, running averages updated); the prefix is untouched. Returns (BackboneClassifier,
    history); `backbone` itself is left unchanged.
    """
    from aigen.models.backbones import BackboneClassifier, new_head, pool, to_model_layout

    A_tr, y_tr, A_val, y_val, device = _prepare(backbone, A_tr, y_tr, A_val, y_val, epochs,
                                                batch_size, checkpoint, device)
    if A_tr.ndim != 4:
        raise ValueError("fine-tuning needs the prefix activations (N, C, H, W), not pooled features")
    stage = copy.deepcopy(backbone.stage).to(device)
    for param in stage.parameters():
        param.requires_grad_(True)
    head = new_head(backbone.n_features, seed).to(device)

    def forward(batch):
        return head(pool(stage(to_model_layout(batch, device))))

    with deterministic_torch(seed):
        history = _fit([stage, head], forward, A_tr, y_tr, A_val, y_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} fine-tuned")
    for param in stage.parameters():
        param.requires_grad_(False)
    return BackboneClassifier(backbone, "finetuned", stage, head, device=device), history


def train_from_images(backbone, X_tr, y_tr, X_val, y_val, *, regime: str, epochs: int,
                      lr: float, batch_size: int = 32, seed: int = 0, device="cpu",
                      progress: bool = True, checkpoint: str = "last"):
    """Either regime ("frozen" or "finetuned") trained from model-input images rather than
    cached activations: every batch runs the frozen prefix (and, frozen, the pretrained stage) in
    eval mode without gradients, then the trained part. X_tr / X_val give float32 (N, 3, H, W)
    batches when indexed (aigen.data.augment.AugmentedImages; X_tr's `augmented(index, epoch)`,
    if present, gives the training batches). Same head initialisation, optimiser, seeded batch
    order and checkpoint policy as train_frozen / train_finetuned, so without augmentation the
    result matches theirs up to floating-point summation order. Returns (BackboneClassifier,
    history).
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
        history = _fit(modules, forward, X_tr, y_tr, X_val, y_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, device=device, progress=progress,
                       checkpoint=checkpoint, desc=f"{backbone.name} {regime} (from images)")
    if regime == "finetuned":
        for param in stage.parameters():
            param.requires_grad_(False)
    return BackboneClassifier(backbone, regime, stage, head, device=device), history
