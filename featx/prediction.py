"""Label new images with a head saved by ``fit`` (``head.joblib``)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from featx._version import __version__
from featx.config import IMAGE_EXTENSIONS
from featx.decode import DecodeError, decode_image
from featx.embed import Embedder
from featx.errors import FeatxError

logger = logging.getLogger(__name__)

HEAD_FORMAT_VERSION = 1
#: File name of a fitted head inside its run folder.
HEAD_FILE_NAME = "head.joblib"
HEAD_KEYS = ("format_version", "featx_version", "estimator", "label_names", "features",
             "model_handle", "embedding_size", "input_size", "raw_size")


def load_head(path: str | os.PathLike) -> dict:
    """Load a ``head.joblib`` (or the one in a run folder) and check that this featx can use it.

    Raises
    ------
    FeatxError
        When the file is missing or not a featx head, or was written by a featx
        version with another major.minor number.
    """
    import joblib

    path = Path(path)
    if path.is_dir():
        if not (path / HEAD_FILE_NAME).is_file():
            raise FeatxError("No head in folder", str(path), expected=f"a {HEAD_FILE_NAME} file in it",
                             hint="Pass a head.joblib written by `python -m featx.fit`, or the run "
                             "folder that contains it (runs/<head>).")
        path = path / HEAD_FILE_NAME
    if not path.is_file():
        raise FeatxError("Head file not found", str(path),
                         hint="Pass the head.joblib written by `python -m featx.fit`.")
    try:
        bundle = joblib.load(path)
    except Exception as error:  # noqa: BLE001 - unpickling raises many unrelated types
        raise FeatxError("Cannot read head file", str(path), got=f"{type(error).__name__}: {error}",
                         expected="a head.joblib written by featx.fit") from None
    if not isinstance(bundle, dict) or any(key not in bundle for key in HEAD_KEYS):
        raise FeatxError("Not a featx head", str(path),
                         expected="a head.joblib written by featx.fit")
    if bundle["format_version"] != HEAD_FORMAT_VERSION or \
            _minor(bundle["featx_version"]) != _minor(__version__):
        raise FeatxError(
            "Head written by another featx version", str(path),
            expected=f"featx {_minor(__version__)}.x", got=f"featx {bundle['featx_version']}",
            hint="Fit the head again with this featx: python -m featx.fit --head ...",
        )
    return bundle


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def list_image_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (searched recursively) into image files, in order."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for root, dirs, files in os.walk(item, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                paths.extend(Path(root) / name for name in sorted(files)
                             if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS)
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            raise FeatxError("Image or folder not found", str(item))
    return paths


def predict_images(
    bundle: dict, paths: list[Path], make_embedder: Callable[[], Embedder],
    cache=None, batch_size: int = 32,
) -> list[dict]:
    """Predict a label and class probabilities for each image file.

    Parameters
    ----------
    bundle : dict
        From :func:`load_head`.
    paths : list of Path
    make_embedder : callable
        Builds the model; called only if an image needs embedding.
    cache : FeatureCache, optional
        Embeddings are taken from it for files whose SHA-256 it holds.
    batch_size : int

    Returns
    -------
    list of dict
        Per image: ``path``, ``label`` (or ""), one probability per class name,
        and ``error`` ("" when the image was read).
    """
    if cache is not None and cache.model_handle != bundle["model_handle"]:
        raise FeatxError(
            "Cache written with another model", str(cache.path),
            expected=f"model_handle = {bundle['model_handle']!r}", got=repr(cache.model_handle),
            hint="Pass the cache the head was fitted on, or none.",
        )
    cached = {} if cache is None else {sha: row for row, sha in enumerate(cache.sha256)}
    features = bundle["features"]
    embedder = None
    results = [{"path": str(path), "error": ""} for path in paths]
    rows_to_score: list[tuple[int, np.ndarray]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        nonlocal embedder
        if not pending:
            return
        if embedder is None:
            embedder = make_embedder()
        vectors = embedder.embed(np.stack([pixels for _, pixels in pending]))
        rows_to_score.extend((index, vector) for (index, _), vector in zip(pending, vectors))
        pending.clear()

    for index, path in enumerate(paths):
        try:
            data = path.read_bytes()
        except OSError as error:
            results[index]["error"] = f"cannot read file: {error.strerror or error}"
            continue
        row = cached.get(hashlib.sha256(data).hexdigest())
        if row is not None:
            vector = cache.embeddings[row] if features == "embeddings" else cache.raw[row]
            rows_to_score.append((index, vector))
            continue
        try:
            decoded = decode_image(data, bundle["input_size"], bundle["raw_size"])
        except DecodeError as error:
            results[index]["error"] = str(error)
            continue
        if features == "raw":
            rows_to_score.append((index, decoded.raw))
        else:
            pending.append((index, decoded.pixels))
            if len(pending) >= batch_size:
                flush()
    flush()

    label_names = bundle["label_names"]
    if rows_to_score:
        X = np.stack([vector for _, vector in rows_to_score]).astype(np.float32)
        estimator = bundle["estimator"]
        probabilities = estimator.predict_proba(X)
        # predict_proba columns follow estimator.classes_, label indices
        # seen in training; a class absent from training gets probability 0.
        full = np.zeros((len(X), len(label_names)))
        full[:, estimator.classes_] = probabilities
        for (index, _), row in zip(rows_to_score, full):
            results[index]["label"] = label_names[int(np.argmax(row))]
            for name, probability in zip(label_names, row):
                results[index][name] = float(probability)
    for result in results:
        result.setdefault("label", "")
    return results
