"""Defaults shared by the library and the command-line modules, defined once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: TF Hub handle of the frozen ImageNet MobileNetV2 (depth 1.0, 224x224) feature
#: vector. Contract: float32 RGB in [0, 1], shape (batch, 224, 224, 3), output
#: shape (batch, 1280).
DEFAULT_MODEL_HANDLE = (
    "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
)
DEFAULT_CACHE_PATH = Path("cache/embeddings.h5")
DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_BATCH_SIZE = 32

#: Side in pixels of the square RGB image given to the model.
INPUT_SIZE = 224
#: Side in pixels of the square grayscale thumbnail stored for the raw-pixel head.
RAW_SIZE = 32

#: Name of the split of images found in a folder without split subfolders.
NO_SPLIT = "none"
#: Split folder names, matched case-insensitively, and the split each one means.
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: Image file extensions, matched case-insensitively.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)

DEVICES = ("auto", "cpu", "gpu")


def usable_cores() -> int:
    """Return the cores this process may run on (its CPU affinity where the OS reports it)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Return the default number of decoding threads: one per core, at least 2."""
    return max(2, usable_cores())


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Settings of one ``extract`` run.

    Attributes
    ----------
    data_dir : Path
        Folder laid out as ``<split>/<class>/<file>`` or ``<class>/<file>``.
    cache_path : Path
        HDF5 cache to create or complete.
    model_handle : str
        TF Hub handle (URL) or local SavedModel folder.
    batch_size : int
        Images per model call, at least 1.
    workers : int or None
        Decoding threads; None picks one per core, at least 2.
    device : {"auto", "cpu", "gpu"}
        Where the model runs; "auto" uses a GPU when TensorFlow detects one.
    mixed_precision : bool
        Let TensorFlow run float16 kernels on a GPU (auto mixed precision).
    rebuild : bool
        Rename the existing cache to ``<cache>.bak-<timestamp>`` and start a new one.
    """

    data_dir: Path
    cache_path: Path = DEFAULT_CACHE_PATH
    model_handle: str = DEFAULT_MODEL_HANDLE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    device: str = "auto"
    mixed_precision: bool = False
    rebuild: bool = False
