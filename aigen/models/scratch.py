"""The scratch CNN: forward and backward written out on aigen.kernels, no autograd.

    input (N, 1, 32, 32) gray in [0, 1]
    -> conv 3x3, F filters, valid (N, F, 30, 30) -> ReLU -> max-pool 2x2 (N, F, 15, 15)
    -> flatten (C, H, W order, as torch's nn.Flatten) (N, 225 F) -> fully connected -> 1 logit
    -> sigmoid = P(AI-generated)

Loss: binary cross-entropy computed from the logit (numerically stable), averaged over the batch.
Optimiser: plain SGD.  Initialisation, either way every weight and bias of a layer ~
uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 9 for the conv and 225 F for the fully
connected layer, drawn in the order conv weight, conv bias, fc weight, fc bias:
  "torch" (default): exactly the values nn.Conv2d(1, F, 3) and nn.Linear(225 F, 1) get after
      torch.manual_seed(seed) (kaiming_uniform_ with a = sqrt(5), biases U(+-1/sqrt(fan_in)),
      float32 draws from torch's generator), so a plain PyTorch twin starts from the same weights;
  "legacy": drawn from np.random.default_rng(seed) in float64, then cast to the model's dtype.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from aigen.errors import UserError

INPUT_SHAPE = (1, 32, 32)
KERNEL_SIZE = 3
POOL_SIZE = 2
CONV_OUT = INPUT_SHAPE[1] - KERNEL_SIZE + 1  # 30
POOL_OUT = CONV_OUT // POOL_SIZE  # 15
PARAM_NAMES = ("conv_w", "conv_b", "fc_w", "fc_b")
FILE_FORMAT = "aigen-scratch-cnn"
FILE_VERSION = 1
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INITS = ("torch", "legacy")
WORKSPACE_SHAPES = 4  # batch sizes whose buffers are kept (training, last partial batch, evaluation)
# A batch whose conv output is smaller than this allocates as it goes: such arrays come from malloc's
# heap (below glibc's initial mmap threshold) without page faults, and the lookup would cost more.
WORKSPACE_MIN_BYTES = 128 * 1024


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample binary cross-entropy of sigmoid(z) against y in {0, 1}, without overflow:
    max(z, 0) - z y + log(1 + exp(-|z|))."""
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _legacy_uniform(seed: int):
    """draw(shape, fan_in, is_weight) -> U(+-1/sqrt(fan_in)) from np.random.default_rng(seed), float64."""
    rng = np.random.default_rng(seed)

    def draw(shape, fan_in, is_weight):
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape)

    return draw


def _torch_uniform(seed: int):
    """draw(shape, fan_in, is_weight) -> the values torch's default Conv2d/Linear initialisation
    draws (float32) from a generator seeded like torch.manual_seed(seed): kaiming_uniform_(a=sqrt(5))
    for weights, whose bound is gain * sqrt(3 / fan_in) computed as torch computes it, and
    U(+-1/sqrt(fan_in)) for biases."""
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)

    def draw(shape, fan_in, is_weight):
        if is_weight:
            gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # nn.init.calculate_gain("leaky_relu", sqrt(5))
            bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
        else:
            bound = 1 / math.sqrt(fan_in)
        values = torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        return values.numpy()

    return draw


class ScratchCNN:
    """conv3x3(F) -> ReLU -> maxpool2x2 -> FC -> 1 logit, on the kernels of `backend`.

    Parameters are plain numpy arrays: `conv_w` (F, 1, 3, 3), `conv_b` (F,), `fc_w` (225 F,),
    `fc_b` (1,). `dtype` float32 for training, float64 for gradient checks.
    """

    def __init__(self, filters: int = 8, seed: int = 0, backend: str = "cython",
                 dtype=np.float32, init: str = "torch"):
        from aigen.kernels import get_backend

        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.filters = int(filters)
        self.seed = int(seed)
        self.backend = backend
        self.kernels = get_backend(backend)
        self.n_fc_inputs = self.filters * POOL_OUT * POOL_OUT
        conv_fan_in = INPUT_SHAPE[0] * KERNEL_SIZE * KERNEL_SIZE
        shapes = {"conv_w": ((self.filters, INPUT_SHAPE[0], KERNEL_SIZE, KERNEL_SIZE), conv_fan_in),
                  "conv_b": ((self.filters,), conv_fan_in),
                  "fc_w": ((self.n_fc_inputs,), self.n_fc_inputs),
                  "fc_b": ((1,), self.n_fc_inputs)}
        draw = _torch_uniform(self.seed) if init == "torch" else _legacy_uniform(self.seed)
        for name in PARAM_NAMES:
            shape, fan_in = shapes[name]
            setattr(self, name, draw(shape, fan_in, is_weight=name.endswith("_w")).astype(self.dtype))
        # Per-batch-size buffers the training step writes into (the kernels' out=): a step then
        # allocates no multi-MB array, so its time does not depend on the allocator's state.
        self._workspaces: dict[int, dict[str, np.ndarray]] = {}

    def __repr__(self) -> str:
        return (f"ScratchCNN(filters={self.filters}, seed={self.seed}, backend={self.backend!r}, "
                f"dtype={self.dtype.name}, init={self.init!r}, n_params={self.n_params})")

    # -- parameters ---------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The parameter arrays by name (the live arrays, not copies)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy parameter values in (shapes must match; cast to the model's dtype)."""
        for name in PARAM_NAMES:
            value = np.asarray(params[name])
            current = getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(f"{name}: expected shape {current.shape}, got {value.shape}")
            setattr(self, name, np.ascontiguousarray(value, dtype=self.dtype))

    @property
    def n_params(self) -> int:
        """Number of trainable values: F*9 + F (conv) + 225*F + 1 (fc); 1881 for F=8, 3761 for 16."""
        return int(sum(getattr(self, name).size for name in PARAM_NAMES))

    # -- forward / backward -------------------------------------------------------------------

    def _input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, INPUT_SHAPE))}), "
                             f"got {x.shape}")
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self.dtype)
        return x

    def _workspace(self, n: int, backward: bool):
        """This batch size's buffers by name (the forward ones, and the backward ones if asked for),
        made on first use; the last WORKSPACE_SHAPES batch sizes are kept.  Their contents are
        overwritten by the next step.  None for a batch too small to need them (WORKSPACE_MIN_BYTES)."""
        if n * self.filters * CONV_OUT * CONV_OUT * self.dtype.itemsize < WORKSPACE_MIN_BYTES:
            return None
        ws = self._workspaces.pop(n, None)
        if ws is None:
            ws = {}
            while len(self._workspaces) >= WORKSPACE_SHAPES:
                self._workspaces.pop(next(iter(self._workspaces)))
        self._workspaces[n] = ws  # most recently used last
        f, dt = self.filters, self.dtype
        if "z1" not in ws:
            ws.update(z1=np.empty((n, f, CONV_OUT, CONV_OUT), dt), m1=np.empty((n, f, POOL_OUT, POOL_OUT), dt),
                      pooled=np.empty((n, f, POOL_OUT, POOL_OUT), dt))
        if backward and "dz1" not in ws:
            ws.update(dz1=np.empty((n, f, CONV_OUT, CONV_OUT), dt),
                      dpooled=np.empty((n, f * POOL_OUT * POOL_OUT), dt),
                      mask=np.empty((n, f, POOL_OUT, POOL_OUT), bool),
                      dw=np.empty(self.conv_w.shape, dt), db=np.empty(self.conv_b.shape, dt))
        return ws

    def _forward(self, x: np.ndarray, ws=None):
        """(conv output, its max-pool, pooled activation, logits); x already validated.  With `ws`
        (from _workspace) the arrays are written into the workspace.

        ReLU and max-pooling commute (both are monotone), so maxpool(relu(z)) is computed as
        relu(maxpool(z)): the same values, with the ReLU on a quarter of the elements.
        """
        k = self.kernels
        z1 = k.conv2d_forward(x, self.conv_w, self.conv_b, None if ws is None else ws["z1"])
        m1 = k.maxpool2d_forward(z1, POOL_SIZE, None if ws is None else ws["m1"])
        pooled = np.maximum(m1, 0) if ws is None else np.maximum(m1, 0, out=ws["pooled"])
        logits = pooled.reshape(x.shape[0], -1) @ self.fc_w + self.fc_b[0]
        return z1, m1, pooled, logits

    def conv_activations(self, x) -> np.ndarray:
        """ReLU of the convolution's output (N, F, 30, 30) for inputs x (N, 1, 32, 32): where
        each learned filter responds (the maps the max-pool then summarises)."""
        x = self._input(x)
        return np.maximum(self.kernels.conv2d_forward(x, self.conv_w, self.conv_b, None), 0)

    def forward(self, x) -> np.ndarray:
        """Logits (N,) for inputs x (N, 1, 32, 32)."""
        x = self._input(x)
        return self._forward(x, self._workspace(x.shape[0], backward=False))[3]

    def _loss_and_grads(self, x: np.ndarray, y: np.ndarray, ws=None):
        """(mean loss, grads, logits) for a validated batch; with `ws` (from _workspace) the conv
        gradients live in the workspace (valid until the next step)."""
        k = self.kernels
        n = x.shape[0]
        z1, m1, pooled, logits = self._forward(x, ws)
        loss = float(bce_with_logits(logits, y).mean())
        dlogits = (sigmoid(logits) - y) / n  # d(mean BCE)/d logit
        flat = pooled.reshape(n, -1)
        g_fc_w = dlogits @ flat
        g_fc_b = np.array([dlogits.sum()], dtype=self.dtype)
        if ws is None:
            dpooled = np.multiply.outer(dlogits, self.fc_w).reshape(pooled.shape)
            positive = m1 > 0
        else:
            dpooled = np.multiply.outer(dlogits, self.fc_w, out=ws["dpooled"]).reshape(pooled.shape)
            positive = np.greater(m1, 0, out=ws["mask"])
        # ReLU passes the gradient where its input was > 0; the input that matters is each window's
        # maximum m1, the one element of the window the pooling gradient goes to.
        dm1 = np.multiply(dpooled, positive, out=dpooled)
        # Routed to each window's first maximum of z1: where relu(z1) has its first maximum too
        # whenever m1 > 0, and the gradient is zero otherwise, so this is the exact gradient of
        # conv -> ReLU -> pool (PyTorch's, ties included).
        dz1 = k.maxpool2d_backward(dm1, z1, POOL_SIZE, None if ws is None else ws["dz1"])
        outs = None if ws is None else (None, ws["dw"], ws["db"])
        # The input layer: the images need no gradient, so none is computed.
        _, g_conv_w, g_conv_b = k.conv2d_backward(dz1, x, self.conv_w, outs, input_grad=False)
        grads = {"conv_w": g_conv_w, "conv_b": g_conv_b, "fc_w": g_fc_w, "fc_b": g_fc_b}
        return loss, grads, logits

    def _targets(self, y, n: int) -> np.ndarray:
        y = np.asarray(y, dtype=self.dtype).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{n} inputs but {y.shape[0]} labels")
        return y

    def loss_and_grads(self, x, y) -> tuple[float, dict[str, np.ndarray]]:
        """Mean BCE over the batch and its gradient with respect to every parameter."""
        x = self._input(x)
        loss, grads, _ = self._loss_and_grads(x, self._targets(y, x.shape[0]))
        return loss, grads

    def sgd_step(self, x, y, lr: float) -> float:
        """One plain SGD update on the batch (x, y); returns the batch's loss before the update."""
        x = self._input(x)
        return self._sgd_step(x, self._targets(y, x.shape[0]), lr)[0]

    def _sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float):
        """(loss, logits before the update) for an already validated batch: the training loop's path."""
        loss, grads, logits = self._loss_and_grads(x, y, self._workspace(x.shape[0], backward=True))
        for name, grad in grads.items():
            param = getattr(self, name)
            param -= self.dtype.type(lr) * grad
        return loss, logits

    def predict_proba(self, X, batch_size: int = 256) -> np.ndarray:
        """P(AI-generated) for inputs X (N, 1, 32, 32), float64 (N,)."""
        X = np.asarray(X)
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], batch_size):
            # float64 before the sigmoid: in float32 it saturates to exactly 0 or 1 at |logit| > 17
            out[start:start + batch_size] = sigmoid(
                self.forward(X[start:start + batch_size]).astype(np.float64))
        return out

    def evaluate(self, X, y, batch_size: int = 256) -> tuple[float, float]:
        """(mean BCE, accuracy at probability 0.5) on (X, y)."""
        X = np.asarray(X)
        y = np.asarray(y).reshape(-1)
        logits = np.concatenate([self.forward(X[i:i + batch_size])
                                 for i in range(0, X.shape[0], batch_size)]).astype(np.float64)
        loss = float(bce_with_logits(logits, y).mean())
        acc = float(np.mean((logits > 0) == (y == 1)))
        return loss, acc

    # -- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Atomically write the parameters, the architecture and `metadata` to an .npz file."""
        from aigen.io import atomic_path, json_default

        header = {
            "format": FILE_FORMAT,
            "format_version": FILE_VERSION,
            "architecture": {"input_shape": list(INPUT_SHAPE), "kernel_size": KERNEL_SIZE,
                             "filters": self.filters, "pool_size": POOL_SIZE,
                             "fc_inputs": self.n_fc_inputs},
            "n_params": self.n_params,
            "dtype": self.dtype.name,
            "backend": self.backend,
            "seed": self.seed,
            "init": self.init,
            "metadata": dict(metadata or {}),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy adds no suffix
            np.savez(fh, header=np.array(json.dumps(header, default=json_default)),
                     **self.params)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> "ScratchCNN":
        """Read a model written by `save`; `backend` defaults to the one it was trained with."""
        model, _ = cls.load_with_header(path, backend)
        return model

    @classmethod
    def load_with_header(cls, path, backend: str | None = None):
        """(model, header dict with architecture and metadata) from a file written by `save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {name: data[name] for name in PARAM_NAMES}
        except FileNotFoundError:
            raise UserError(f"model file {path} does not exist") from None
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path} is not a scratch CNN model file: {exc}") from exc
        if header.get("format") != FILE_FORMAT:
            raise UserError(f"{path} is not a scratch CNN model file")
        if header.get("format_version") != FILE_VERSION:
            raise UserError(f"{path}: unsupported scratch CNN file version {header.get('format_version')}")
        model = cls(filters=header["architecture"]["filters"], seed=header["seed"],
                    backend=backend or header["backend"], dtype=np.dtype(header["dtype"]),
                    init=header.get("init", "legacy"))
        model.set_params(arrays)
        return model, header
