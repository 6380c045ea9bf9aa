"""Shared fixtures: generated image folders, a NumPy stand-in model, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA_VARIABLE = "FEATX_DATA_DIR"
REQUIRE_VARIABLE = "FEATX_REQUIRE_INTEGRATION"


class StubEmbedder:
    """Deterministic stand-in for the TF Hub model (96 floats).

    The first 48 values are the mean colours of a 4x4 grid, which separate the
    test classes. The other 48 are pixel deviations from those means at fixed
    spots, scaled up, so that two different noisy images of one colour stay
    below the near-duplicate threshold, as two different X-rays do.
    """

    handle = "stub://grid-means"
    embedding_size = 96

    def __init__(self) -> None:
        self.n_calls = 0
        self.n_images = 0

    def embed(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8
        assert images.shape[1:] == (224, 224, 3)
        self.n_calls += 1
        self.n_images += len(images)
        pixels = images.astype(np.float32) / 255.0
        grid = pixels.reshape(len(images), 4, 56, 4, 56, 3).mean(axis=(2, 4))
        spots = pixels[:, 28::56, 28::56, :] - grid
        features = np.concatenate([grid.reshape(len(images), -1), 10 * spots.reshape(len(images), -1)], axis=1)
        return features.astype(np.float32)


@pytest.fixture
def stub_embedder() -> StubEmbedder:
    return StubEmbedder()


def write_image(path: Path, array: np.ndarray, **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_options)
    return path


def textured_image(colour, seed: int, size=(96, 128)) -> np.ndarray:
    """An RGB image of one colour with seeded noise, so each file has its own hash."""
    rng = np.random.default_rng(seed)
    base = np.zeros(size + (3,), np.float64) + np.asarray(colour, np.float64)
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


CLASS_COLOURS = {"cats": (200, 40, 40), "dogs": (40, 200, 40), "fish": (40, 40, 200)}


def make_dataset(root: Path, per_class: dict[str, int] | None = None, splits=("train", "test")) -> Path:
    """Write a split/class folder of PNG and JPEG images with class-specific colours."""
    per_class = per_class or {"train": 6, "test": 3}
    seed = 0
    for split in splits:
        for label, colour in CLASS_COLOURS.items():
            for i in range(per_class.get(split, 4)):
                seed += 1
                suffix = ".png" if i % 2 else ".jpg"
                write_image(root / split / label / f"{label}_{i}{suffix}", textured_image(colour, seed))
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real X-ray data set; skipped when absent, unless CI requires it."""
    value = os.environ.get(REAL_DATA_VARIABLE)
    problems = []
    if not value or not Path(value).is_dir():
        problems.append(f"{REAL_DATA_VARIABLE} is not set to the data folder")
    if not os.environ.get("TFHUB_CACHE_DIR"):
        problems.append("TFHUB_CACHE_DIR is not set to a TF Hub cache folder")
    if problems:
        message = "integration test needs the real data and model: " + "; ".join(problems)
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(message + f" ({REQUIRE_VARIABLE}=1 forbids skipping)")
        pytest.skip(message)
    return Path(value)
