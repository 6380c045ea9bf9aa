"""The extract loop: find images, read and decode them in threads, embed, write.

Reading, hashing and decoding run in a pool of worker threads (Pillow,
OpenCV and hashlib release the GIL), a few batches ahead of the model, so
decoding overlaps inference. The model runs in the calling thread. Pixels are
held for at most ``PREFETCH_BATCHES + 1`` batches at a time once the model
runs, and for up to ``LOAD_PREFETCH_IMAGES`` images while it loads, so that
decoding also overlaps model loading. Each batch of embeddings is written to
the cache journal as soon as it is computed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from featx._text import count
from featx.cache_writer import CacheWriter
from featx.config import INPUT_SIZE, RAW_SIZE, ExtractConfig, default_workers
from featx.dataset import ImageCollection, ImageFile, find_images
from featx.decode import DecodedImage, DecodeError, decode_image
from featx.embed import Embedder, check_model_handle
from featx.errors import FeatxError, check_positive_int

logger = logging.getLogger(__name__)

#: Batches decoded ahead of the model.
PREFETCH_BATCHES = 2
#: Images decoded ahead while the model is still loading. Loading takes
#: several seconds and keeps only about one core busy, so decoding runs
#: further ahead meanwhile. At about 150 kB of pixels per image, that is at most about
#: 80 MB, whatever the number of images.
LOAD_PREFETCH_IMAGES = 512


@dataclasses.dataclass
class ExtractSummary:
    """Counts and timings of one extract run.

    Attributes
    ----------
    n_images : int
        Image files found in the data folder.
    n_embedded : int
        Images run through the model in this run.
    n_reused : int
        Images whose content (SHA-256) was already cached under another path
        or modification time, so their embedding was copied.
    n_cached : int
        Images unchanged since an earlier run (same size and mtime).
    skipped : list of (str, str)
        Relative path and reason of each file that could not be read or decoded.
    n_missing : int
        Cached rows whose file is no longer in the data folder.
    class_names : list of str
    seconds : float
        Wall time of the run, model loading included.
    cache_path : Path
    model_loaded : bool
        Whether the model had to be loaded.
    load_seconds : float
        Time spent loading the model (TensorFlow import included), 0 when not
        loaded. Decoding goes on in the worker threads meanwhile.
    """

    n_images: int
    n_embedded: int
    n_reused: int
    n_cached: int
    skipped: list[tuple[str, str]]
    n_missing: int
    class_names: list[str]
    seconds: float
    cache_path: Path
    model_loaded: bool
    load_seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        return self.n_embedded + self.n_reused + self.n_cached

    @property
    def images_per_second(self) -> float:
        return (self.n_embedded + self.n_reused) / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass
class _Outcome:
    """Result of reading one file in a worker thread."""

    image: ImageFile
    file_size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    decoded: DecodedImage | None = None
    error: str | None = None


class _LazyEmbedder:
    """Load the model on first use, so a run with nothing new never loads it."""

    def __init__(self, factory: Callable[[], Embedder]) -> None:
        self._factory = factory
        self._embedder: Embedder | None = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def get(self) -> Embedder:
        if self._embedder is None:
            started = time.perf_counter()
            self._embedder = self._factory()
            self.load_seconds = time.perf_counter() - started
            logger.info("Loaded the model in %.1f s", self.load_seconds)
        return self._embedder


def extract_features(
    config: ExtractConfig,
    make_embedder: Callable[[], Embedder] | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Embed every image of ``config.data_dir`` that the cache lacks.

    Parameters
    ----------
    config : ExtractConfig
    make_embedder : callable returning an Embedder, optional
        Builds the model when the first image needs it. Defaults to a
        :class:`featx.embed.HubEmbedder` for ``config.model_handle``; tests
        pass a small stand-in.
    progress : bool
        Show a progress bar with images per second.

    Returns
    -------
    ExtractSummary

    Raises
    ------
    FeatxError
        For a bad data folder, a cache of another model, a cache in use by
        another process, or a cache that cannot be written.
    """
    started = time.perf_counter()
    check_positive_int(config.batch_size, "--batch-size")
    workers = check_positive_int(config.workers, "--workers") if config.workers is not None else default_workers()
    if make_embedder is None:
        make_embedder = _hub_embedder_factory(config)

    check_model_handle(config.model_handle)
    collection = find_images(config.data_dir)
    logger.info(
        "Found %s in %s (%s) under %s, splits: %s",
        count(len(collection.images), "image"), count(len(collection.class_names), "class"),
        ", ".join(collection.class_names), collection.data_dir, ", ".join(collection.splits),
    )
    embedder = _LazyEmbedder(make_embedder)
    with CacheWriter(
        config.cache_path, model_handle=config.model_handle,
        input_size=INPUT_SIZE, raw_size=RAW_SIZE, rebuild=config.rebuild,
    ) as writer:
        _check_same_data_dir(writer.previous_data_dir, collection.data_dir, config.cache_path)
        run = _ExtractRun(writer, embedder, config.batch_size, workers)
        try:
            run.process(collection.images, progress)
        except KeyboardInterrupt:
            if writer.has_journal:
                logger.warning(
                    "Interrupted: saving the %d images embedded so far to %s; run the same "
                    "command again to finish", run.n_embedded + run.n_reused, config.cache_path,
                )
                run.commit(collection)
            raise
        run.commit(collection)

    summary = ExtractSummary(
        n_images=len(collection.images),
        n_embedded=run.n_embedded,
        n_reused=run.n_reused,
        n_cached=run.n_cached,
        skipped=[(path, reason) for path, _, _, reason in run.skipped],
        n_missing=run.n_missing,
        class_names=collection.class_names,
        seconds=time.perf_counter() - started,
        cache_path=Path(config.cache_path),
        model_loaded=embedder.loaded,
        load_seconds=embedder.load_seconds,
    )
    return summary


def _check_same_data_dir(previous: str | None, current: Path, cache_path: Path) -> None:
    """Reject a cache built from another data folder that still exists.

    Mixing two collections in one cache would mark every image of the first
    missing and merge both sets of class names. A folder that was moved or
    renamed (the old path is gone) is accepted with a warning, because the
    cached rows are keyed by paths relative to the data folder.
    """
    if not previous or previous == str(current):
        return
    if os.path.isdir(previous):
        raise FeatxError(
            "Cache built from another data folder",
            str(cache_path),
            expected=str(previous),
            got=str(current),
            hint="Pass a new --cache path for this folder, or --rebuild to set the "
            "old cache aside and start again.",
        )
    logger.warning(
        "The cache was built from %s, which no longer exists; treating %s as the same "
        "folder moved. Cached images not found there are marked missing.", previous, current,
    )


def _hub_embedder_factory(config: ExtractConfig) -> Callable[[], Embedder]:
    def make() -> Embedder:
        from featx.embed import HubEmbedder

        return HubEmbedder(config.model_handle, device=config.device,
                           mixed_precision=config.mixed_precision,
                           warmup_batch_size=config.batch_size)

    return make


class _ExtractRun:
    """State of one run: counters, the pending batch, and the skip list."""

    def __init__(self, writer: CacheWriter, embedder: _LazyEmbedder, batch_size: int, workers: int) -> None:
        self.writer = writer
        self.embedder = embedder
        self.batch_size = batch_size
        self.workers = workers
        self.n_embedded = 0
        self.n_reused = 0
        self.n_cached = 0
        self.n_missing = 0
        self.present: set[str] = set()
        self.skipped: list[tuple[str, int, int, str]] = []
        self._to_embed: list[_Outcome] = []
        self._to_copy: list[_Outcome] = []
        self._pending_hashes: set[str] = set()
        # Until the model is loaded, one decoding thread at a time.
        self._gate = _Gate(1)

    def process(self, images: list[ImageFile], progress: bool) -> None:
        to_read = [image for image in images if not self._is_unchanged(image)]
        if not to_read:
            return
        logger.info(
            "%s to read (not cached yet, or changed since), %d cached; decoding threads: %d",
            count(len(to_read), "image"), self.n_cached, self.workers,
        )
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        known_hashes = self.writer.hashes
        bar = tqdm(total=len(to_read), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="featx-decode") as pool:
            read = lambda image: self._gate.run(_read_image, image, known_hashes)  # noqa: E731
            running = self.batch_size * (PREFETCH_BATCHES + 1)
            loading = max(running, LOAD_PREFETCH_IMAGES)
            max_pending = lambda: running if self.embedder.loaded else loading  # noqa: E731
            # Log lines printed while the bar is shown go above it, not into it.
            with logging_redirect_tqdm(loggers=[logging.getLogger("featx")]):
                try:
                    for outcome in _ordered_map(pool, read, to_read, max_pending):
                        self._add(outcome)
                        bar.update(1)
                    self._flush()
                finally:
                    bar.close()

    def _is_unchanged(self, image: ImageFile) -> bool:
        """Return True when the file has the size and mtime recorded for it."""
        try:
            stat = os.stat(image.path)
        except OSError:
            return False  # The worker reports the error with its reason.
        key = (stat.st_size, stat.st_mtime_ns)
        entry = self.writer.index.get(image.relative_path)
        if entry is not None and (int(entry["file_size"]), int(entry["mtime_ns"])) == key \
                and entry["labels"] == image.label and entry["splits"] == image.split:
            self.n_cached += 1
            self.present.add(image.relative_path)
            return True
        known_skip = self.writer.skipped.get(image.relative_path)
        if known_skip is not None and known_skip[:2] == key:
            reason = known_skip[2]
            logger.warning("Skipped %s: %s (unchanged since the last run)", image.relative_path, reason)
            self.skipped.append((image.relative_path, key[0], key[1], reason))
            return True
        return False

    def _add(self, outcome: _Outcome) -> None:
        path = outcome.image.relative_path
        if outcome.error is not None:
            logger.warning("Skipped %s: %s", path, outcome.error)
            self.skipped.append((path, outcome.file_size, outcome.mtime_ns, outcome.error))
            return
        self.present.add(path)
        # Decided here rather than in the worker, so that which copy of a
        # duplicated file gets embedded does not depend on thread timing.
        if outcome.sha256 in self.writer.hashes or outcome.sha256 in self._pending_hashes:
            outcome.decoded = None
            self._to_copy.append(outcome)
        else:
            self._to_embed.append(outcome)
            self._pending_hashes.add(outcome.sha256)
            # Load the model as soon as the first image needs it, while the
            # decoding threads fill the next batches.
            self._get_embedder()
        if len(self._to_embed) >= self.batch_size or len(self._to_copy) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        """Embed the pending images and write them, with pending copies, as one batch."""
        rows = []
        embedding_size = self.writer.attrs.get("embedding_size")
        computed: dict[str, dict] = {}
        if self._to_embed:
            embedder = self._get_embedder()
            pixels = np.stack([outcome.decoded.pixels for outcome in self._to_embed])
            embeddings = embedder.embed(pixels)
            embedding_size = embedder.embedding_size
            for outcome, embedding in zip(self._to_embed, embeddings):
                decoded = outcome.decoded
                content = {
                    "embeddings": embedding, "raw": decoded.raw, "width": decoded.width,
                    "height": decoded.height, "channels": decoded.channels,
                    "bit_depth": decoded.bit_depth, "formats": decoded.format,
                }
                computed[outcome.sha256] = content
                rows.append((outcome, content))
            self.n_embedded += len(self._to_embed)
        if self._to_copy:
            cached = [o.sha256 for o in self._to_copy if o.sha256 not in computed]
            content = self.writer.rows_for_hashes(cached)
            for outcome in self._to_copy:
                if outcome.sha256 in computed:
                    rows.append((outcome, computed[outcome.sha256]))
                else:
                    i = cached.index(outcome.sha256)
                    rows.append((outcome, {name: column[i] for name, column in content.items()}))
            self.n_reused += len(self._to_copy)
        self._to_embed, self._to_copy = [], []
        self._pending_hashes = set()
        if rows:
            self.writer.append(_rows_to_table(rows), embedding_size)

    def _get_embedder(self) -> Embedder:
        """Return the model, loading it first if needed.

        Loading keeps about one core busy, so one decoding thread runs
        meanwhile, and all of them run once the model is ready. More threads during
        loading slow it down, because they compete with it for the cores and
        for Python's GIL. On 2 cores, loading took about 0.7 s longer with one
        decoding thread and about 1.1 s longer with two.
        """
        if self.embedder.loaded:
            return self.embedder.get()
        try:
            return self.embedder.get()
        finally:
            self._gate.set_limit(self.workers)

    def commit(self, collection: ImageCollection) -> None:
        """Merge this run into the cache file, unless the file would not change."""
        found = {image.relative_path for image in collection.images}
        self.n_missing = sum(1 for path in self.writer.index if path not in found)
        if not self.writer.has_journal and not self.writer.path.exists():
            return  # Nothing could be embedded and there is no cache to update.
        if self.writer.has_journal or self._state_changed(collection):
            self.writer.commit(self.present, self.skipped, collection.data_dir)

    def _state_changed(self, collection: ImageCollection) -> bool:
        """Return True when presence flags, skips or the data folder differ from the file."""
        if self.writer.previous_data_dir != str(collection.data_dir):
            return True
        skips = {(path, reason) for path, _, _, reason in self.skipped}
        if skips != {(path, entry[2]) for path, entry in self.writer.skipped.items()}:
            return True
        return any(
            bool(entry["present"]) != (path in self.present)
            for path, entry in self.writer.index.items()
        )


def _read_image(image: ImageFile, known_hashes: dict) -> _Outcome:
    """Read, hash and (unless the content is cached) decode one file."""
    outcome = _Outcome(image)
    try:
        image.relative_path.encode("utf-8")
    except UnicodeEncodeError:
        outcome.error = "file name is not valid UTF-8; rename the file"
        return outcome
    try:
        with open(image.path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as error:
        outcome.error = f"cannot read file: {error.strerror or error}"
        return outcome
    outcome.file_size, outcome.mtime_ns = stat.st_size, stat.st_mtime_ns
    outcome.sha256 = hashlib.sha256(data).hexdigest()
    if outcome.sha256 in known_hashes:
        return outcome
    try:
        outcome.decoded = decode_image(data)
    except DecodeError as error:
        outcome.error = str(error)
    return outcome


def _ordered_map(pool, function, items: Iterable, max_pending: Callable[[], int]) -> Iterator:
    """Like ``pool.map`` but with at most ``max_pending()`` results submitted and not yet yielded.

    The limit is read again before each submission, so it may change while
    the results are consumed. When it drops, no work is submitted until the
    results in flight fall below it.
    """
    pending: collections.deque = collections.deque()
    iterator = iter(items)
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < max_pending():
            item = next(iterator, _END)
            if item is _END:
                exhausted = True
            else:
                pending.append(pool.submit(function, item))

    try:
        fill()
        while pending:
            result = pending.popleft().result()
            fill()
            yield result
    finally:
        for future in pending:
            future.cancel()


_END = object()


class _Gate:
    """Let at most ``limit`` threads at a time run a function, in the order they arrive.

    The order matters: results are consumed in submission order, so a thread
    overtaken again and again at the gate would hold up the whole run.
    The limit may change at any time.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._active = 0
        self._arrived = 0
        self._admitted = 0
        self._changed = threading.Condition()

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    def run(self, function: Callable, *args):
        with self._changed:
            ticket = self._arrived
            self._arrived += 1
            self._changed.wait_for(lambda: self._admitted == ticket and self._active < self._limit)
            self._admitted += 1
            self._active += 1
            self._changed.notify_all()
        try:
            return function(*args)
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()


def _rows_to_table(rows: list[tuple[_Outcome, dict]]) -> dict[str, np.ndarray]:
    table = {
        "paths": [o.image.relative_path for o, _ in rows],
        "labels": [o.image.label for o, _ in rows],
        "splits": [o.image.split for o, _ in rows],
        "sha256": [o.sha256 for o, _ in rows],
        "file_size": [o.file_size for o, _ in rows],
        "mtime_ns": [o.mtime_ns for o, _ in rows],
        "present": [True] * len(rows),
    }
    table = {name: np.asarray(values, dtype=object if isinstance(values[0], str) else None)
             for name, values in table.items()}
    for name in ("embeddings", "raw", "width", "height", "channels", "bit_depth", "formats"):
        values = [content[name] for _, content in rows]
        table[name] = np.asarray(values, dtype=object) if name == "formats" else np.asarray(values)
    return table
