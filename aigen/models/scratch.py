"""The scratch CNN: forward and backward written out on aigen.kernels, no autograd.

    input (N, 1, 32, 32) gray in [0, 1]
    -> conv 3x3, F filters, valid (N, F, 30, 30) -> ReLU -> max-pool 2x2 (N, F, 15, 15)
    -> flatten (C, H, W order, as torch's nn.Flatten) (N, 225 F) -> fully connected -> 1 logit
    -> sigmoid = P(AI-generated)

Loss: binary cross-entropy computed from the logit (numerically stable), averaged over the batch.
Optimiser: plain SGD. Initialisation (PyTorch's default for Conv2d/Linear): every weight and bias
of a layer ~ uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 9 for the conv and 225 F for the
fully connected layer, drawn from np.random.default_rng(seed) in the order conv weight, conv bias,
fc weight, fc bias (in float64, then cast to the model's dtype).
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


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample binary cross-entropy of sigmoid(z) against y in {0, 1}, without overflow:
    max(z, 0) - z y + log(1 + exp(-|z|))."""
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class ScratchCNN:
    """conv3x3(F) -> ReLU -> maxpool2x2 -> FC -> 1 logit, on the kernels of `backend`.

    Parameters are plain numpy arrays: `conv_w` (F, 1, 3, 3), `conv_b` (F,), `fc_w` (225 F,),
    `fc_b` (1,). `dtype` float32 for training, float64 for gradient checks.
    """

    def __init__(self, filters: int = 8, seed: int = 0, backend: str = "cython",
                 dtype=np.float32):
        from aigen.kernels import get_backend

        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.filters = int(filters)
        self.seed = int(seed)
        self.backend = backend
        self.kernels = get_backend(backend)
        self.n_fc_inputs = self.filters * POOL_OUT * POOL_OUT
        rng = np.random.default_rng(self.seed)
        conv_bound = 1.0 / np.sqrt(INPUT_SHAPE[0] * KERNEL_SIZE * KERNEL_SIZE)
        fc_bound = 1.0 / np.sqrt(self.n_fc_inputs)
        shapes = {"conv_w": ((self.filters, INPUT_SHAPE[0], KERNEL_SIZE, KERNEL_SIZE), conv_bound),
                  "conv_b": ((self.filters,), conv_bound),
                  "fc_w": ((self.n_fc_inputs,), fc_bound),
                  "fc_b": ((1,), fc_bound)}
        for name in PARAM_NAMES:
            shape, bound = shapes[name]
            setattr(self, name, rng.uniform(-bound, bound, shape).astype(self.dtype))

    def __repr__(self) -> str:
        return (f"ScratchCNN(filters={self.filters}, seed={self.seed}, backend={self.backend!r}, "
                f"dtype={self.dtype.name}, n_params={self.n_params})")

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

    def _forward(self, x: np.ndarray):
        """(conv output, its max-pool, pooled activation, logits); x already validated.

        ReLU and max-pooling commute (both are monotone), so maxpool(relu(z)) is computed as
        relu(maxpool(z)): the same values, with the ReLU on a quarter of the elements.
        """
        k = self.kernels
        z1 = k.conv2d_forward(x, self.conv_w, self.conv_b)
        m1 = k.maxpool2d_forward(z1, POOL_SIZE)
        pooled = np.maximum(m1, 0)
        logits = pooled.reshape(x.shape[0], -1) @ self.fc_w + self.fc_b[0]
        return z1, m1, pooled, logits

    def forward(self, x) -> np.ndarray:
        """Logits (N,) for inputs x (N, 1, 32, 32)."""
        return self._forward(self._input(x))[3]

    def _loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        """(mean loss, grads, logits) for a validated batch."""
        k = self.kernels
        n = x.shape[0]
        z1, m1, pooled, logits = self._forward(x)
        loss = float(bce_with_logits(logits, y).mean())
        dlogits = (sigmoid(logits) - y) / n  # d(mean BCE)/d logit
        flat = pooled.reshape(n, -1)
        g_fc_w = dlogits @ flat
        g_fc_b = np.array([dlogits.sum()], dtype=self.dtype)
        dpooled = np.multiply.outer(dlogits, self.fc_w).reshape(pooled.shape)
        # ReLU passes the gradient where its input was > 0; the input that matters is each window's
        # maximum m1, the one element of the window the pooling gradient goes to.
        dm1 = np.multiply(dpooled, m1 > 0, out=dpooled)
        # Routed to each window's first maximum of z1: where relu(z1) has its first maximum too
        # whenever m1 > 0, and the gradient is zero otherwise, so this is the exact gradient of
        # conv -> ReLU -> pool (PyTorch's, ties included).
        dz1 = k.maxpool2d_backward(dm1, z1, POOL_SIZE)
        _, g_conv_w, g_conv_b = k.conv2d_backward(dz1, x, self.conv_w)
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
        loss, grads, logits = self._loss_and_grads(x, y)
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
                    backend=backend or header["backend"], dtype=np.dtype(header["dtype"]))
        model.set_params(arrays)
        return model, header
