"""Frequency spectra of the classes (aigen.data.spectra): a known sinusoid, the high-pass crop, the
seeded capped sample, the streamed class means, the flag and the figure."""

import numpy as np
import pytest
from PIL import Image

from aigen.data import spectra
from aigen.data.dataset import load_dataset
from helpers import snapshot


def _sinusoid(size, cycles_per_pixel, angle=0.0, contrast=60.0):
    yy, xx = np.mgrid[0:size, 0:size]
    phase = 2 * np.pi * cycles_per_pixel * (xx * np.cos(angle) + yy * np.sin(angle))
    grey = 128 + contrast * np.sin(phase)
    return Image.fromarray(np.stack([grey] * 3, -1).astype(np.uint8))


@pytest.mark.parametrize("frequency", [0.125, 0.3])
def test_a_sinusoid_peaks_at_its_frequency(frequency):
    size = 128
    residual, upscaled = spectra.highpass_crop(_sinusoid(size + 40, frequency), size)
    assert residual.shape == (size, size) and not upscaled
    log_magnitude, radial = spectra.spectrum(residual)
    f = spectra.frequencies(size)
    assert f[int(np.argmax(radial[1:])) + 1] == pytest.approx(frequency, abs=1.0 / size)
    # In the centred 2-D map the peak sits on the x axis at +-frequency.
    row, col = np.unravel_index(np.argmax(log_magnitude), log_magnitude.shape)
    assert row == size // 2 and abs(col - size // 2) == round(frequency * size)


def test_the_ring_of_a_diagonal_frequency_is_its_radius():
    size = 128
    residual, _ = spectra.highpass_crop(_sinusoid(size, 0.2, angle=np.pi / 4), size)
    _, radial = spectra.spectrum(residual)
    assert abs(int(np.argmax(radial[1:])) + 1 - 0.2 * size) <= 1


def test_small_images_are_enlarged_and_large_ones_cropped_at_stored_resolution():
    residual, upscaled = spectra.highpass_crop(_sinusoid(60, 0.1), 64)
    assert residual.shape == (64, 64) and upscaled
    # A large image is cropped, not resized: a fine pattern keeps its frequency.
    residual, upscaled = spectra.highpass_crop(_sinusoid(1000, 0.25), 64)
    _, radial = spectra.spectrum(residual)
    assert not upscaled and int(np.argmax(radial[1:])) + 1 == 16


def test_sample_is_seeded_and_capped_per_class():
    class Im:
        def __init__(self, label):
            self.label = label
    images = [Im(i % 3 == 0) for i in range(60)]  # 20 of label 1, 40 of label 0
    a = spectra.sample(images, 10, seed=0)
    assert sum(im.label for im in a) == 10 and len(a) == 20
    assert [id(x) for x in a] == [id(x) for x in spectra.sample(images, 10, seed=0)]
    assert [id(x) for x in a] != [id(x) for x in spectra.sample(images, 10, seed=1)]
    assert len(spectra.sample(images, 100, seed=0)) == 60


def test_class_spectra_stream_the_means_and_flag_a_high_frequency_difference(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for cls in ("ai", "real"):
        (data / cls).mkdir(parents=True)
    for i in range(6):
        smooth = np.kron(rng.normal(128, 30, (20, 20)), np.ones((4, 4)))  # 80x80, coarse blocks
        Image.fromarray(np.clip(np.stack([smooth] * 3, -1), 0, 255).astype(np.uint8)).save(
            data / "real" / f"r{i}.png")
        # The same kind of scene plus the finest stripes: energy at the highest frequency.
        checker = 12.0 * (np.arange(80)[None, :] % 2 * 2 - 1)  # columns alternate: 0.5 cycle/px
        Image.fromarray(np.clip(np.stack([smooth + checker] * 3, -1), 0, 255).astype(np.uint8)
                        ).save(data / "ai" / f"a{i}.png")
    dataset = load_dataset(data, workers=1, progress=False, specs=())
    before = snapshot(data)
    out = spectra.class_spectra(dataset.images, size=64, per_class=4, seed=0, progress=False)
    assert snapshot(data) == before
    record = out.record
    assert {k: c["n"] for k, c in record["classes"].items()} == {"ai": 4, "real": 4}
    assert out.maps[1].shape == (64, 64) and np.isfinite(out.maps[1]).all()
    diff = record["difference"]
    assert diff["concentrated_at_high_frequency"] and diff["largest_at"] > 0.4
    assert "Flag" in spectra.difference_text(diff)
    # Streamed running means equal the plain mean over the sampled images.
    chosen = spectra.sample(dataset.images, 4, seed=0)
    direct = [spectra.spectrum(spectra.highpass_crop(Image.open(im.path).convert("RGB"), 64)[0])[1]
              for im in chosen if im.label == 0]
    assert np.allclose(record["classes"]["real"]["radial_mean"], np.mean(direct, axis=0))
    again = spectra.class_spectra(dataset.images, size=64, per_class=4, seed=0, progress=False)
    assert again.record == record
    spectra.spectra_figure(out, tmp_path / "spectra.png", dataset.class_names)
    with Image.open(tmp_path / "spectra.png") as im:
        assert im.format == "PNG" and im.width > 800
    text = "\n".join(spectra.spectra_markdown(record, "figures/spectra.png"))
    assert "How to read it" in text and "ai n=4" in text


def test_no_flag_when_the_classes_differ_at_low_frequency():
    f = spectra.frequencies(64)
    base = -2 * f
    record = {"frequencies": f.tolist(), "classes": {
        "ai": {"radial_mean": (base + np.where(f < 0.1, 0.5, 0.0)).tolist()},
        "real": {"radial_mean": base.tolist()}}}
    diff = spectra.difference(record)
    assert not diff["concentrated_at_high_frequency"] and diff["largest_at"] < 0.1
    assert "not concentrated" in spectra.difference_text(diff)
