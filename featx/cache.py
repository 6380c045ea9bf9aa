"""The HDF5 embedding cache: its format, and reading it back.

A cache is one HDF5 file (``cache/embeddings.h5`` by default) with one row per
image. Every dataset below has ``n_rows`` entries along its first axis.

==============  ==================  =============================================
dataset         dtype, shape        content
==============  ==================  =============================================
``embeddings``  float32 (n, d)      model output, ``d`` = attribute ``embedding_size``
``raw``         uint8 (n, r*r)      r x r grayscale thumbnail, row-major
``labels``      int32 (n,)          index into attribute ``class_names``
``splits``      UTF-8 str (n,)      ``train``, ``val``, ``test`` or ``none``
``paths``       UTF-8 str (n,)      path relative to the data folder, ``/``-separated
``sha256``      ASCII (n,)          SHA-256 of the file's bytes, hex
``file_size``   int64 (n,)          bytes
``mtime_ns``    int64 (n,)          modification time, ns since the epoch
``width``       int32 (n,)          stored width in pixels
``height``      int32 (n,)          stored height in pixels
``channels``    int16 (n,)          channels as stored (1, 2, 3 or 4)
``bit_depth``   int16 (n,)          bits per channel as stored
``formats``     UTF-8 str (n,)      file format (``JPEG``, ``PNG``, ...)
``present``     bool (n,)           False when the file was gone at the last run
==============  ==================  =============================================

The group ``skipped`` lists the files of the last run that could not be
decoded: ``paths`` and ``reasons`` (UTF-8 str), ``file_size`` and ``mtime_ns``.

File attributes: ``format`` (``"featx-cache"``), ``format_version``,
``class_names`` (sorted), ``model_handle``, ``embedding_size``,
``input_size``, ``raw_size``, ``featx_version``, ``data_dir`` and ``updated``.

While ``extract`` runs, finished batches are first written as separate files
in the folder ``<cache>.journal/`` and merged into the HDF5 file when the run
ends; the HDF5 file itself is only ever replaced whole, by an atomic rename.
:func:`load_cache` reads the journal too, so the batches of an interrupted
run are visible before the next run merges them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from featx.errors import FeatxError

logger = logging.getLogger(__name__)

FORMAT_NAME = "featx-cache"
FORMAT_VERSION = 1

#: Per-row columns and their dtypes in the HDF5 file. ``str`` marks a UTF-8
#: variable-length string. ``embeddings`` and ``raw`` have a second axis.
COLUMN_DTYPES: dict[str, object] = {
    "embeddings": np.float32,
    "raw": np.uint8,
    "labels": np.int32,
    "splits": str,
    "paths": str,
    "sha256": "S64",
    "file_size": np.int64,
    "mtime_ns": np.int64,
    "width": np.int32,
    "height": np.int32,
    "channels": np.int16,
    "bit_depth": np.int16,
    "formats": str,
    "present": np.bool_,
}
#: Columns small enough to read whole when a run starts.
INDEX_COLUMNS = ("paths", "sha256", "file_size", "mtime_ns", "labels", "splits", "present")
SKIPPED_COLUMNS = ("paths", "reasons", "file_size", "mtime_ns")


def journal_dir(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".journal")


@dataclasses.dataclass
class FeatureCache:
    """Embeddings and raw pixels of a data folder, read from a cache.

    Attributes
    ----------
    embeddings : ndarray of shape (n_samples, embedding_size), float32
    raw : ndarray of shape (n_samples, raw_size**2), uint8
        Grayscale thumbnails in 0-255; divide by 255 for [0, 1].
    labels : ndarray of shape (n_samples,), int
        Index into ``label_names``.
    label_names : list of str
        Sorted class names of the rows loaded.
    splits, paths, sha256, formats : ndarray of shape (n_samples,), str
    file_size, mtime_ns, width, height, channels, bit_depth : ndarray of shape (n_samples,), int
    model_handle : str
    embedding_size, input_size, raw_size : int
    skipped : list of (str, str)
        Path and reason of each file the last run could not decode.
    missing : list of str
        Paths of rows left out because their file was gone at the last run.
    path : Path
        The cache file.
    """

    embeddings: np.ndarray
    raw: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    splits: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    file_size: np.ndarray
    mtime_ns: np.ndarray
    width: np.ndarray
    height: np.ndarray
    channels: np.ndarray
    bit_depth: np.ndarray
    formats: np.ndarray
    model_handle: str
    embedding_size: int
    input_size: int
    raw_size: int
    skipped: list[tuple[str, str]]
    missing: list[str]
    path: Path
    featx_version: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    @property
    def y(self) -> np.ndarray:
        """Class names of the rows, shape (n_samples,)."""
        return np.asarray(self.label_names, dtype=object)[self.labels]

    def split(self, name: str) -> "FeatureCache":
        """Return the rows of one split (``"train"``, ``"val"``, ``"test"`` or ``"none"``).

        ``label_names`` and label indices stay those of the whole cache, so
        labels from two splits can be compared directly.
        """
        if name not in set(self.splits):
            raise FeatxError(
                "Split not in cache",
                repr(name),
                expected=f"one of {sorted(set(self.splits))}",
            )
        return self.take(self.splits == name)

    def take(self, rows: np.ndarray) -> "FeatureCache":
        """Return the rows selected by a boolean mask or an index array."""
        fields = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = value[rows]
            fields[field.name] = value
        return FeatureCache(**fields)


def load_cache(path: str | os.PathLike, include_missing: bool = False) -> FeatureCache:
    """Read a cache written by ``python -m featx.extract``.

    Parameters
    ----------
    path : str or PathLike
        The HDF5 cache file.
    include_missing : bool, default False
        Also return rows whose image file was gone at the last extract run.

    Returns
    -------
    FeatureCache

    Raises
    ------
    FeatxError
        When the file does not exist, is not a featx cache, is damaged, or has
        a format version this featx cannot read.

    Examples
    --------
    >>> cache = featx.load_cache("cache/embeddings.h5")       # doctest: +SKIP
    >>> train, test = cache.split("train"), cache.split("test")  # doctest: +SKIP
    """
    path = Path(path)
    # A writer may merge its journal between our listing it and opening a
    # part. The merged file then contains those rows, so one retry suffices.
    for attempt in range(3):
        try:
            table, attrs, skipped = _read_all(path)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    # Rows are returned sorted by path, so the same images give the same
    # arrays (and the same fitted heads) whatever order the runs wrote them in.
    order = np.argsort(table["paths"].astype(str), kind="stable")
    table = {name: column[order] for name, column in table.items()}
    if not include_missing:
        missing = [str(p) for p in table["paths"][~table["present"]]]
        table = {name: column[table["present"]] for name, column in table.items()}
    else:
        missing = []
    label_names = sorted(set(table["labels"].tolist()))
    label_index = {name: i for i, name in enumerate(label_names)}
    labels = np.array([label_index[name] for name in table["labels"]], dtype=np.int64)
    return FeatureCache(
        embeddings=table["embeddings"],
        raw=table["raw"],
        labels=labels,
        label_names=label_names,
        splits=table["splits"],
        paths=table["paths"],
        sha256=table["sha256"],
        file_size=table["file_size"],
        mtime_ns=table["mtime_ns"],
        width=table["width"],
        height=table["height"],
        channels=table["channels"],
        bit_depth=table["bit_depth"],
        formats=table["formats"],
        model_handle=attrs["model_handle"],
        embedding_size=int(attrs["embedding_size"]),
        input_size=int(attrs["input_size"]),
        raw_size=int(attrs["raw_size"]),
        featx_version=str(attrs.get("featx_version", "")),
        skipped=skipped,
        missing=missing,
        path=path,
    )


def _read_all(path: Path) -> tuple[dict[str, np.ndarray], dict, list[tuple[str, str]]]:
    parts = list_journal(path)
    if path.is_dir():
        raise FeatxError("Cache path is a folder", str(path),
                         expected="the path of a cache file such as cache/embeddings.h5")
    if not path.exists() and not parts:
        raise FeatxError(
            "Cache not found",
            str(path),
            hint="Check the path, or write the cache first with "
            "`python -m featx.extract DATA_DIR --cache PATH`.",
        )
    if path.exists():
        with open_cache_file(path) as file:
            attrs = read_attrs(file, path)
            table = read_rows(file, 0, int(file["paths"].shape[0]))
            skipped = [
                (p, r) for p, r in zip(*(read_skipped(file)[k] for k in ("paths", "reasons")))
            ]
    else:
        attrs, table, skipped = None, None, []
    for part in parts:
        part_table, part_attrs = read_journal_part(part)
        if attrs is None:
            attrs = part_attrs
        check_compatible(part_attrs, attrs, part)
        table = part_table if table is None else merge_tables(table, part_table)
    return table, attrs, skipped


# --- HDF5 file --------------------------------------------------------------


def open_cache_file(path: Path) -> h5py.File:
    """Open a cache file read-only, or raise FeatxError if it is not one."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise FeatxError(
            "Cannot read cache",
            str(path),
            expected="an HDF5 file written by featx",
            got=f"a file that HDF5 cannot open: {_first_line(error)}",
            hint="The file is damaged or is not a featx cache. Move it away and "
            "run extract again, or pass another --cache path.",
        ) from None
    if file.attrs.get("format") != FORMAT_NAME:
        file.close()
        raise FeatxError(
            "Not a featx cache",
            str(path),
            expected=f"an HDF5 file whose attribute 'format' is {FORMAT_NAME!r}",
            hint="Pass the path of a cache written by featx.extract.",
        )
    return file


def read_attrs(file: h5py.File, path: Path) -> dict:
    """Return the file attributes as plain Python values, checking the format version."""
    attrs = {key: _plain(value) for key, value in file.attrs.items()}
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise FeatxError(
            "Unsupported cache format version",
            str(path),
            expected=str(FORMAT_VERSION),
            got=str(version),
            hint="Run extract with --rebuild to write a new cache, or use the "
            "featx version that wrote it.",
        )
    missing = [name for name in COLUMN_DTYPES if name not in file]
    if missing:
        raise FeatxError(
            "Damaged cache",
            str(path),
            expected="all datasets of the featx cache format",
            got=f"no {', '.join(missing)}",
            hint="Move the file away and run extract again.",
        )
    return attrs


def read_rows(
    file: h5py.File, start: int, stop: int, columns=COLUMN_DTYPES
) -> dict[str, np.ndarray]:
    """Read rows [start, stop) of the given columns; labels become class names (str)."""
    class_names = np.asarray(_plain(file.attrs["class_names"]), dtype=object)
    table = {}
    for name in columns:
        dataset = file[name]
        if COLUMN_DTYPES[name] is str:
            values = np.asarray(dataset.asstr()[start:stop], dtype=object)
        elif COLUMN_DTYPES[name] == "S64":
            values = np.asarray(dataset[start:stop]).astype(str).astype(object)
        else:
            values = dataset[start:stop]
        table[name] = values
    if "labels" in table:
        table["labels"] = class_names[table["labels"]] if len(class_names) else table["labels"].astype(object)
    return table


def read_skipped(file: h5py.File) -> dict[str, np.ndarray]:
    group = file.get("skipped")
    if group is None:
        return {name: np.array([], dtype=object) for name in SKIPPED_COLUMNS}
    return {
        "paths": np.asarray(group["paths"].asstr()[:], dtype=object),
        "reasons": np.asarray(group["reasons"].asstr()[:], dtype=object),
        "file_size": group["file_size"][:],
        "mtime_ns": group["mtime_ns"][:],
    }


def check_compatible(found: dict, expected: dict, where: Path) -> None:
    """Raise FeatxError unless two sources describe embeddings of the same model."""
    for key in ("model_handle", "embedding_size", "input_size", "raw_size"):
        if key in found and key in expected and found[key] != expected[key]:
            raise FeatxError(
                "Cache written with another model",
                str(where),
                expected=f"{key} = {expected[key]!r}",
                got=repr(found[key]),
                hint="Pass a new --cache path for this model, or run extract "
                "with --rebuild to set the old cache aside and start again.",
            )


# --- journal of an unfinished run -------------------------------------------


def list_journal(cache_path: Path) -> list[Path]:
    folder = journal_dir(cache_path)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("part-*.npz"))


def read_journal_part(part: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read one batch written by a run that has not merged it yet."""
    try:
        with np.load(part, allow_pickle=False) as archive:
            attrs = json.loads(str(archive["meta"]))
            table = {}
            for name, dtype in COLUMN_DTYPES.items():
                values = archive[name]
                if dtype is str or dtype == "S64" or name == "labels":
                    values = values.astype(object)
                table[name] = values
    except (OSError, ValueError, KeyError) as error:
        raise FeatxError(
            "Damaged journal file",
            str(part),
            hint=f"({_first_line(error)}) Delete this file; extract embeds its images again.",
        ) from None
    return table, attrs


def merge_tables(base: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return ``base`` with rows replaced or appended by ``update``, keyed by path."""
    update_paths = set(update["paths"].tolist())
    keep = np.array([p not in update_paths for p in base["paths"]], dtype=bool)
    return {
        name: np.concatenate([base[name][keep], update[name]]) for name in base
    }


def iter_row_chunks(file: h5py.File, rows_per_chunk: int = 4096) -> Iterator[dict[str, np.ndarray]]:
    """Yield all rows of a cache file, ``rows_per_chunk`` at a time."""
    n_rows = int(file["paths"].shape[0])
    for start in range(0, n_rows, rows_per_chunk):
        yield read_rows(file, start, min(start + rows_per_chunk, n_rows))


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
