"""Shared fixtures."""

import pytest


@pytest.fixture(autouse=True)
def aigen_cache_dir(tmp_path_factory, monkeypatch):
    """A fresh AIGEN_CACHE_DIR per test, so tests never read or write the user's cache."""
    path = tmp_path_factory.mktemp("aigen-cache")
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its packaged ImageNet weights (no download), loaded once."""
    from aigen.models.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


# ---- the study: a tiny image folder and one quick run, shared by test_study.py / test_predict.py

def _write_study_images(root, n_per_class=20, seed=0):
    """Two class folders ai/ and real/ of small PNG/JPEG images (sizes vary), plus two broken
    files (ai/broken.jpg: not an image; real/truncated.jpg: a cut JPEG). The last AI image has a
    name that is not valid UTF-8 (b"caf\\xe9_NN.jpg", as archives made on Windows have). Returns
    `root`."""
    import os
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in ("ai", "real"):
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            yy, xx = np.mgrid[0:h, 0:w]
            if cls == "ai":  # smooth patterns
                base = 128 + 100 * np.sin(xx / (3 + i % 5)) * np.cos(yy / 4)
                pixels = np.stack([base, base[::-1], np.full_like(base, 80.0)], -1)
            else:  # noise
                pixels = rng.normal(128, 60, (h, w, 3))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            fmt = "PNG" if (i % 2 == 0) == (cls == "ai") else "JPEG"
            name = f"{cls}_{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}"
            if cls == "ai" and i == n_per_class - 1:
                name = os.fsdecode(f"caf\xe9_{i:02d}.jpg".encode("latin-1"))
            img.save(folder / name, format=fmt)
    (root / "ai" / "broken.jpg").write_bytes(b"not an image at all")
    whole = (root / "real" / "real_00.jpg").read_bytes()
    (root / "real" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return root


@pytest.fixture(scope="session")
def make_study_images():
    """The function that writes the study's tiny two-class image folder (see _write_study_images)."""
    return _write_study_images


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory):
    """`aigen study --quick` on the tiny folder, with efficientnet_lite0 and an unavailable
    resnet18 (offline, empty torch cache), run once per session.

    Returns a dict: data, out (Paths), code (exit status), stdout, stderr, argv.
    """
    import contextlib
    import io

    from aigen import cli

    base = tmp_path_factory.mktemp("quick-study")
    data = _write_study_images(base / "data")
    out = base / "results"
    argv = ["study", "--data", str(data), "--out", str(out), "--quick", "--device", "cpu",
            "--backbones", "efficientnet_lite0", "resnet18", "--workers", "1", "--no-progress"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGEN_CACHE_DIR", str(base / "cache"))
        mp.setenv("AIGEN_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(base / "torch-home"))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(argv)
    return {"data": data, "out": out, "code": code, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "argv": argv, "cache": base / "cache"}


@pytest.fixture
def small_disk(tmp_path):
    """A function size_kib -> the Path of an empty tmpfs of that size (a full disk on demand);
    the test is skipped where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    import subprocess

    mounted = []

    def make(size_kib: int):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                                   str(path)], capture_output=True, text=True)
            why = proc.stderr.strip()[:120] if proc.returncode else None
        except OSError as exc:  # no mount command
            why = str(exc)
        if why is not None:
            pytest.skip(f"cannot mount a small tmpfs here: {why}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
