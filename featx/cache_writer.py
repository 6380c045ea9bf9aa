"""Write the HDF5 cache so that no finished batch is ever lost.

One ``CacheWriter`` owns a cache for the length of one extract run, under an
exclusive lock. Each finished batch is written to its own file in
``<cache>.journal/`` (temporary name, fsync, atomic rename), so a process
killed at any instant leaves every earlier batch on disk. When the run ends,
:meth:`CacheWriter.commit` writes the old rows and the journal into a new
HDF5 file, fsyncs it and renames it over the old one; only then is the journal
deleted. A crash inside the commit leaves either the old file and the journal
or the new file (and a journal whose rows it already holds), and rows are
keyed by path, so the next run ends with exactly one row per image.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from featx._version import __version__
from featx.cache import (
    COLUMN_DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    check_compatible,
    iter_row_chunks,
    journal_dir,
    list_journal,
    open_cache_file,
    read_attrs,
    read_journal_part,
    read_rows,
    read_skipped,
)
from featx.errors import FeatxError
from featx.lock import CacheLock

logger = logging.getLogger(__name__)

#: Columns copied from an earlier row when a file's content is already cached.
CONTENT_COLUMNS = ("embeddings", "raw", "width", "height", "channels", "bit_depth", "formats")


class CacheWriter:
    """Exclusive writer of one cache file.

    Parameters
    ----------
    path : Path
        The HDF5 cache file; it need not exist yet.
    model_handle : str
        Model whose embeddings this run writes; must match an existing cache.
    input_size, raw_size : int
        Image sizes of this run; must match an existing cache.
    rebuild : bool
        Rename an existing cache to ``<cache>.bak-<timestamp>`` and start an empty one.

    Attributes
    ----------
    index : dict of str to dict
        For each cached path: ``file_size``, ``mtime_ns``, ``sha256``,
        ``labels`` (class name), ``splits`` and ``present``.
    hashes : dict of str to (str, int)
        For each cached SHA-256: where its row is, for copying its embedding.
    skipped : dict of str to (int, int, str)
        Files the last run could not decode: size, mtime and reason.
    """

    def __init__(
        self, path: Path, *, model_handle: str, input_size: int, raw_size: int,
        rebuild: bool = False,
    ) -> None:
        self.path = Path(path)
        self.attrs = {"model_handle": model_handle, "input_size": input_size, "raw_size": raw_size}
        self.rebuild = rebuild
        self._lock = CacheLock(self.path)
        self._file: h5py.File | None = None
        # Journal parts on disk, and for each path in them the part and row
        # of its latest version. Only this index stays in memory, so memory
        # does not grow with the embeddings written.
        self._parts: list[Path] = []
        self._journal_rows: dict[str, tuple[int, int]] = {}
        self._part_cache: tuple[int, dict[str, np.ndarray]] | None = None
        self._next_part = 0
        self.index: dict[str, dict] = {}
        self.hashes: dict[str, tuple[str, int]] = {}
        self.skipped: dict[str, tuple[int, int, str]] = {}
        self.class_names: list[str] = []
        self.previous_data_dir: str | None = None

    # --- life cycle ---------------------------------------------------------

    def __enter__(self) -> "CacheWriter":
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock and read what the cache and its journal hold."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FeatxError(
                "Cannot create the cache folder",
                str(self.path.parent),
                hint=f"({error.strerror}) Pass a --cache path in a writable folder.",
            ) from None
        if self.path.is_dir():
            raise FeatxError(
                "Cache path is a folder",
                str(self.path),
                expected="a file path such as cache/embeddings.h5",
            )
        self._lock.acquire()
        try:
            if self.rebuild:
                self._set_aside()
            self._read_existing()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lock.release()

    def _set_aside(self) -> None:
        # A timestamp keeps the backups of earlier rebuilds too.
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.bak-{stamp}")
        if self.path.exists():
            os.replace(self.path, backup)
            logger.info("Moved the previous cache to %s (--rebuild)", backup)
        folder = journal_dir(self.path)
        if folder.exists():
            shutil.rmtree(folder)

    def _read_existing(self) -> None:
        if self.path.exists():
            self._file = open_cache_file(self.path)
            attrs = read_attrs(self._file, self.path)
            check_compatible(attrs, self.attrs, self.path)
            self.attrs["embedding_size"] = int(attrs["embedding_size"])
            self.previous_data_dir = attrs.get("data_dir")
            table = read_rows(self._file, 0, int(self._file["paths"].shape[0]), INDEX_COLUMNS)
            self.class_names = [str(name) for name in attrs["class_names"]]
            self._add_to_index(table, "main")
            skipped = read_skipped(self._file)
            self.skipped = {
                p: (int(s), int(m), r)
                for p, r, s, m in zip(skipped["paths"], skipped["reasons"],
                                      skipped["file_size"], skipped["mtime_ns"])
            }
        for part in list_journal(self.path):
            table, part_attrs = read_journal_part(part)
            check_compatible(part_attrs, self.attrs, part)
            self.attrs.setdefault("embedding_size", int(part_attrs["embedding_size"]))
            self._parts.append(part)
            self._add_to_index(table, len(self._parts) - 1)
            self._next_part = max(self._next_part, int(part.stem.split("-")[1]) + 1)
        if self._parts:
            n_rows = len(self._journal_rows)
            logger.info(
                "Found %d images embedded by an unfinished run in %s; they are kept",
                n_rows, journal_dir(self.path),
            )

    def _add_to_index(self, table: dict[str, np.ndarray], source: str | int) -> None:
        for row, path in enumerate(table["paths"]):
            entry = {name: table[name][row] for name in ("file_size", "mtime_ns", "sha256", "labels", "splits", "present")}
            self.index[path] = entry
            self.hashes[entry["sha256"]] = (source, row)
            if source != "main":
                self._journal_rows[path] = (source, row)

    # --- reading cached content ---------------------------------------------

    def rows_for_hashes(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Return the content columns (embedding, raw pixels, stored size) of cached hashes."""
        columns = {name: [] for name in CONTENT_COLUMNS}
        for sha in hashes:
            source, row = self.hashes[sha]
            if source == "main":
                values = read_rows(self._file, row, row + 1, CONTENT_COLUMNS)
                for name in CONTENT_COLUMNS:
                    columns[name].append(values[name][0])
            else:
                table = self._read_part(source)
                for name in CONTENT_COLUMNS:
                    columns[name].append(table[name][row])
        return {name: np.asarray(values) for name, values in columns.items()}

    # --- writing -------------------------------------------------------------

    def _read_part(self, source: int) -> dict[str, np.ndarray]:
        if self._part_cache is None or self._part_cache[0] != source:
            self._part_cache = (source, read_journal_part(self._parts[source])[0])
        return self._part_cache[1]

    @property
    def has_journal(self) -> bool:
        return bool(self._parts)

    def append(self, table: dict[str, np.ndarray], embedding_size: int) -> None:
        """Write one batch of rows to the journal, durably, before returning.

        ``table`` has every column of the cache format, with ``labels`` as
        class names.
        """
        expected = self.attrs.setdefault("embedding_size", embedding_size)
        if expected != embedding_size:
            raise FeatxError(
                "Cache written with another model",
                str(self.path),
                expected=f"embedding_size = {expected}",
                got=str(embedding_size),
                hint="Pass a new --cache path for this model, or run extract with --rebuild.",
            )
        folder = journal_dir(self.path)
        part = folder / f"part-{self._next_part:08d}.npz"
        arrays = {name: _to_npz(table[name], name) for name in COLUMN_DTYPES}
        arrays["meta"] = np.array(json.dumps(self.attrs))
        try:
            folder.mkdir(exist_ok=True)
            _write_atomically(part, lambda handle: np.savez(handle, **arrays))
        except OSError as error:
            raise _write_error(self.path, error, journal_kept=self.has_journal) from None
        self._next_part += 1
        self._parts.append(part)
        self._add_to_index(table, len(self._parts) - 1)

    def commit(
        self,
        present_paths: set[str],
        skipped: list[tuple[str, int, int, str]],
        data_dir: Path,
    ) -> None:
        """Merge the journal into a new cache file and replace the old one atomically.

        Parameters
        ----------
        present_paths : set of str
            Paths embedded or cached in this run; other rows get ``present = False``.
        skipped : list of (path, file_size, mtime_ns, reason)
            Files of this run that could not be decoded.
        data_dir : Path
            The data folder of this run, stored as an attribute.
        """
        replaced = self._journal_rows
        labels = set(self.class_names)
        labels.update(str(self.index[path]["labels"]) for path in replaced)
        class_names = sorted(labels)
        attrs = dict(self.attrs)
        attrs.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            class_names=class_names,
            featx_version=__version__,
            data_dir=str(data_dir),
            updated=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        )
        if "embedding_size" not in attrs:
            raise FeatxError("Nothing to write", str(self.path), hint="No image was embedded.")

        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(temporary, "w") as out:
                writer = _RowWriter(out, attrs, class_names)
                if self._file is not None:
                    for chunk in iter_row_chunks(self._file):
                        keep = np.array([p not in replaced for p in chunk["paths"]], dtype=bool)
                        writer.write({name: column[keep] for name, column in chunk.items()}, present_paths)
                # Parts are read back one at a time, keeping only the latest
                # version of each path, so memory stays at one part.
                for source, part in enumerate(self._parts):
                    table, _ = read_journal_part(part)
                    keep = np.array([replaced[p] == (source, row) for row, p in enumerate(table["paths"])],
                                    dtype=bool)
                    writer.write({name: column[keep] for name, column in table.items()}, present_paths)
                _write_skipped(out, skipped)
                out.flush()
            _fsync_path(temporary)
            if self._file is not None:
                self._file.close()
                self._file = None
            os.replace(temporary, self.path)
            _fsync_path(self.path.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise _write_error(self.path, error, journal_kept=self.has_journal) from None
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        shutil.rmtree(journal_dir(self.path), ignore_errors=True)
        self._parts = []
        self._journal_rows = {}
        self._part_cache = None
        logger.debug("Wrote %s", self.path)


class _RowWriter:
    """Append rows to the chunked, resizable datasets of a new cache file."""

    def __init__(self, file: h5py.File, attrs: dict, class_names: list[str]) -> None:
        self.file = file
        self.n_rows = 0
        self.label_index = {name: i for i, name in enumerate(class_names)}
        widths = {"embeddings": attrs["embedding_size"], "raw": attrs["raw_size"] ** 2}
        for name, dtype in COLUMN_DTYPES.items():
            h5_dtype = h5py.string_dtype("utf-8") if dtype is str else dtype
            width = widths.get(name)
            shape = (0, width) if width else (0,)
            chunks = (256, width) if width else (4096,)
            file.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=h5_dtype, chunks=chunks)
        for key, value in attrs.items():
            if key == "class_names":
                file.attrs.create(key, value, dtype=h5py.string_dtype("utf-8"), shape=(len(value),))
            else:
                file.attrs[key] = value

    def write(self, table: dict[str, np.ndarray], present_paths: set[str]) -> None:
        n_new = len(table["paths"])
        if n_new == 0:
            return
        start, stop = self.n_rows, self.n_rows + n_new
        for name in COLUMN_DTYPES:
            if name == "labels":
                values = np.array([self.label_index[label] for label in table["labels"]], dtype=np.int32)
            elif name == "present":
                values = np.array([p in present_paths for p in table["paths"]], dtype=bool)
            else:
                values = _to_hdf5(table[name], name)
            dataset = self.file[name]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = values
        self.n_rows = stop


def _write_skipped(file: h5py.File, skipped: list[tuple[str, int, int, str]]) -> None:
    group = file.create_group("skipped")
    string = h5py.string_dtype("utf-8")
    group.create_dataset("paths", data=[s[0] for s in skipped], dtype=string)
    group.create_dataset("reasons", data=[s[3] for s in skipped], dtype=string)
    group.create_dataset("file_size", data=np.array([s[1] for s in skipped], dtype=np.int64))
    group.create_dataset("mtime_ns", data=np.array([s[2] for s in skipped], dtype=np.int64))


def _to_npz(values: np.ndarray, name: str) -> np.ndarray:
    """Convert a column to a dtype that np.savez stores without pickling."""
    dtype = COLUMN_DTYPES[name]
    if dtype is str or dtype == "S64" or name == "labels":
        return np.asarray(values, dtype=str)
    return np.asarray(values, dtype=dtype)


def _to_hdf5(values: np.ndarray, name: str) -> np.ndarray:
    """Convert a column to the dtype of its HDF5 dataset (str as UTF-8 objects)."""
    dtype = COLUMN_DTYPES[name]
    if dtype is str:
        return np.array([str(value) for value in values], dtype=object)
    if dtype == "S64":
        return np.asarray(values, dtype=str).astype("S64")
    return np.asarray(values, dtype=dtype)


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk; folders cannot be fsynced on Windows."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_error(cache_path: Path, error: OSError, journal_kept: bool) -> FeatxError:
    reason = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    kept = (
        f" Batches finished in this run are kept in {journal_dir(cache_path)} "
        "and the next run saves them."
        if journal_kept else ""
    )
    return FeatxError(
        "Cannot write cache",
        f"{cache_path} ({reason})",
        hint=f"The existing cache file is unchanged.{kept} Free space or fix "
        "the permissions, then run extract again.",
    )
