"""What the trained models look at (docs/study.md#diagnostics).

- Grad-CAM (Selvaraju et al. 2017) for the backbone models: a forward hook on the trainable stage
  (the last convolutional stage) keeps its output A (N, C, h, w); the gradient of the decision's
  evidence (the logit of the predicted class minus the other's) with respect to A, averaged over
  h x w, weighs each channel; the map is ReLU(sum_c weight_c A_c), enlarged (bilinear) to the
  input's size. Bright regions are the ones whose features pushed the decision that way.
- The scratch CNN: its learned 3x3 filters and their activation maps (ReLU of the convolution) on
  a few test images, computed with its own (Cython or NumPy) forward.

The figures take plain arrays, so they can be drawn again from saved data.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

GROUPS = (("ai", True), ("ai", False), ("real", True), ("real", False))  # (class, correct)
PER_GROUP = 3  # Grad-CAM examples per group
SCRATCH_EXAMPLES = 4  # test images whose activation maps are shown


def grad_cam(prefix, stage, head, X, *, classes=None, device=None, batch_size: int = 16
             ) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, H, W) float32, >= 0, prob_ai (N,)) for model inputs X (N, C, H, W).

    The model is head(mean over h, w of stage(prefix(x))), as a BackboneClassifier computes it;
    each map explains a class (1 = ai): `classes[i]` if given (0/1 per input), else the class
    the model predicts for that input."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cpu") if device is None else torch.device(device)
    maps, probs = [], []
    for module in (prefix, stage, head):
        module.to(device).eval()
    for start in range(0, len(X), batch_size):
        x = torch.as_tensor(np.asarray(X[start:start + batch_size]), dtype=torch.float32).to(device)
        kept = {}
        handle = stage.register_forward_hook(lambda module, inputs, output: kept.update(A=output))
        try:
            with torch.enable_grad():
                with torch.no_grad():
                    a = prefix(x)
                # Grad-CAM needs the gradient at the stage's output only, not through the prefix
                a = a.detach().requires_grad_(True)
                logits = head(stage(a).mean(dim=(2, 3)))
                chosen = logits.argmax(dim=1) if classes is None else torch.as_tensor(
                    np.asarray(classes[start:start + batch_size]), device=device)
                sign = torch.where(chosen == 1, 1.0, -1.0)
                evidence = ((logits[:, 1] - logits[:, 0]) * sign).sum()
                (grads,) = torch.autograd.grad(evidence, kept["A"])
        finally:
            handle.remove()
        A = kept["A"].detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * A).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam.float(), size=tuple(x.shape[-2:]), mode="bilinear",
                            align_corners=False).clamp_min(0)
        maps.append(cam[:, 0].cpu().numpy())
        probs.append(torch.softmax(logits.detach().double(), dim=1)[:, 1].cpu().numpy())
    if not maps:
        return np.zeros((0, *np.shape(X)[-2:]), np.float32), np.zeros(0)
    return np.concatenate(maps).astype(np.float32), np.concatenate(probs)


def classifier_grad_cam(clf, X, classes=None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """grad_cam of an aigen.models.backbones.BackboneClassifier with its own prefix and stage (the
    pretrained ones when frozen; the trained stage when fine-tuned; both trained when full)."""
    return grad_cam(clf.prefix, clf.stage, clf.head, X, classes=classes,
                    device=device or clf.device)


def pick_examples(y: np.ndarray, prob_ai: np.ndarray, per_group: int = PER_GROUP
                  ) -> dict[tuple[str, bool], np.ndarray]:
    """Positions of up to `per_group` images per (class, correct) group, the most confident
    first (correct: highest probability of the true class; wrong: of the wrong one); ties by
    position. A group with no image is empty."""
    y = np.asarray(y)
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    predicted = (prob_ai >= 0.5).astype(np.int64)
    confidence = np.where(predicted == 1, prob_ai, 1 - prob_ai)
    out = {}
    for cls, correct in GROUPS:
        label = 1 if cls == "ai" else 0
        members = np.flatnonzero((y == label) & ((predicted == y) == correct))
        order = np.argsort(-confidence[members], kind="stable")
        out[(cls, correct)] = members[order][:per_group]
    return out


def group_label(group: tuple[str, bool]) -> str:
    cls, correct = group
    return f"{cls}, {'correct' if correct else 'wrong'}"


def gradcam_figure(images: np.ndarray, maps: np.ndarray, prob_ai: np.ndarray,
                   groups: Mapping[tuple[str, bool], Sequence[int]], title: str,
                   path: str | os.PathLike, per_group: int = PER_GROUP) -> None:
    """A grid: one row per group (ai/real x correct/wrong), up to `per_group` images each; every
    image (uint8 (H, W, 3)) with its map overlaid (each map scaled to its own maximum)."""
    from aigen.study.figures import _figure, _save

    rows = list(groups)
    fig = _figure(2.3 * per_group + 0.8, 2.35 * len(rows) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(rows), per_group))
    shown = None
    for r, group in enumerate(rows):
        members = list(groups[group])
        for c in range(per_group):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(group_label(group), fontsize="medium")
            if c >= len(members):
                if c == 0:
                    ax.text(0.5, 0.5, "no such test image", ha="center", va="center",
                            fontsize="small", color="grey", transform=ax.transAxes)
                continue
            k = members[c]
            m = maps[k]
            ax.imshow(images[k])
            shown = ax.imshow(m / m.max() if m.max() > 0 else m, cmap="jet", alpha=0.45,
                              vmin=0, vmax=1)
            ax.set_title(f"p(ai) = {prob_ai[k]:.2f}", fontsize="small")
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.6, label="Grad-CAM (scaled to each image's max)")
    fig.suptitle(title, fontsize="medium")
    _save(fig, path)


def scratch_figure(model, X: np.ndarray, y: np.ndarray, prob_ai: np.ndarray, title: str,
                   path: str | os.PathLike) -> None:
    """Top row: the F learned 3x3 filters (one diverging colour scale, 0 = white). Then one row
    per image: the 32x32 grey input, then each filter's activation map (ReLU of the convolution,
    one colour scale per row)."""
    from aigen.study.figures import _figure, _save

    w = np.asarray(model.conv_w)[:, 0]  # (F, 3, 3)
    acts = model.conv_activations(X)
    n_filters = w.shape[0]
    cols = n_filters + 1
    fig = _figure(1.25 * cols + 1.2, 1.35 * (len(X) + 1) + 0.7)
    axes = np.atleast_2d(fig.subplots(len(X) + 1, cols))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    v = float(np.abs(w).max()) or 1.0
    axes[0, 0].set_axis_off()
    axes[0, 0].text(0.5, 0.5, "learned\n3×3 filters", ha="center", va="center",
                    fontsize="small", transform=axes[0, 0].transAxes)
    for f in range(n_filters):
        im = axes[0, f + 1].imshow(w[f], cmap="RdBu_r", vmin=-v, vmax=v)
        axes[0, f + 1].set_title(f"filter {f}", fontsize="x-small")
    fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="weight")
    for r in range(len(X)):
        ax = axes[r + 1, 0]
        ax.imshow(X[r, 0], cmap="gray", vmin=0, vmax=1)
        cls = "ai" if y[r] == 1 else "real"
        verdict = "right" if (prob_ai[r] >= 0.5) == (y[r] == 1) else "wrong"
        ax.set_title(f"{cls} ({verdict}), p(ai) {prob_ai[r]:.2f}", fontsize="x-small")
        top = float(acts[r].max()) or 1.0
        for f in range(n_filters):
            shown = axes[r + 1, f + 1].imshow(acts[r, f], cmap="viridis", vmin=0, vmax=top)
        fig.colorbar(shown, ax=axes[r + 1, 1:], shrink=0.8, label="activation")
    fig.suptitle(title, fontsize="medium")
    _save(fig, path)


# ---- the study's diagnostics stage --------------------------------------------------------------

def gradcam_diagnostic(name: str, clf, store, spec, indices: np.ndarray, y: np.ndarray,
                       prob_ai: np.ndarray, paths: Sequence[str], seed: int,
                       path: str | os.PathLike, device=None) -> dict[str, Any]:
    """Grad-CAM of one backbone model on examples of its seed's test images (`indices`: their
    rows in `store`, the uint8 inputs it was scored on; `y`, `prob_ai`: their labels and its
    probabilities); writes the figure, returns {"seed", "examples": [{"path", "group",
    "label", "prob_ai"}]}. Each map explains the class of the image's decision (`prob_ai` >=
    0.5, which also places it in its group). Under the crop policy that decision is the mean over
    the fixed windows, while the map is computed on, and shown over, the centre window alone: it
    shows where that window holds evidence for the image's class, which the window on its own
    may not have predicted (the map is then weak or empty); `prob_ai` stays the image's."""
    from aigen.data.preprocess import crop_windows, cut_window, to_model_input

    groups = pick_examples(y, prob_ai)
    chosen = np.concatenate([g for g in groups.values()]).astype(np.int64)
    u8 = store.read(np.asarray(indices)[chosen]) if len(chosen) else np.zeros((0, *spec.u8_shape),
                                                                               np.uint8)
    crop = bool(spec.crop)
    if crop:
        u8 = np.stack([cut_window(img, spec, *crop_windows(spec)[0]) for img in u8]) \
            if len(u8) else np.zeros((0, *spec.window().u8_shape), np.uint8)
        spec = spec.window()
    decided = (np.asarray(prob_ai)[chosen] >= 0.5).astype(np.int64)
    maps, _ = classifier_grad_cam(clf, to_model_input(u8, spec), decided, device=device) \
        if len(chosen) else (np.zeros((0, spec.size, spec.size), np.float32), None)
    where = {int(k): j for j, k in enumerate(chosen)}
    local = {g: [where[int(k)] for k in members] for g, members in groups.items()}
    shown = ("the centre windows of test images\n(bright: the window's evidence for the image's "
             "decision; p(ai): the mean over its windows)" if crop else
             "test images (bright: regions that drove the decision)")
    gradcam_figure(u8, maps, np.asarray(prob_ai)[chosen], local,
                   f"{name}, seed {seed}: Grad-CAM on {shown}", path)
    return {"seed": seed, "examples": [
        {"path": paths[int(k)], "group": group_label(g), "label": int(y[int(k)]),
         "prob_ai": float(prob_ai[int(k)])} for g, members in groups.items() for k in members]}


def scratch_diagnostic(model, X: np.ndarray, y: np.ndarray, prob_ai: np.ndarray,
                       paths: Sequence[str], seed: int, path: str | os.PathLike,
                       n: int = SCRATCH_EXAMPLES) -> dict[str, Any]:
    """The scratch CNN's filters and activation maps on `n` of its test images (half of each
    class, the most confidently classified first); writes the figure."""
    groups = pick_examples(y, prob_ai, per_group=len(y))
    half = max(1, n // 2)
    chosen = []
    for cls in ("ai", "real"):
        ranked = list(groups[(cls, True)]) + list(groups[(cls, False)])
        chosen += ranked[:half]
    chosen = np.array(chosen, dtype=np.int64)
    scratch_figure(model, X[chosen], np.asarray(y)[chosen], np.asarray(prob_ai)[chosen],
                   f"scratch_cnn, seed {seed}: learned filters and their activation maps on "
                   "test images", path)
    return {"seed": seed, "filters": int(model.filters),
            "examples": [{"path": paths[int(k)], "label": int(y[int(k)]),
                          "prob_ai": float(prob_ai[int(k)])} for k in chosen]}
