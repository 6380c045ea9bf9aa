"""The extract loop with a NumPy stand-in model: incremental runs, skips, crashes, locks."""

import concurrent.futures
import errno
import os
import shutil
import threading
import time

import h5py
import numpy as np
import pytest

import featx
from featx.cache import journal_dir
from featx.config import ExtractConfig
from featx.errors import FeatxError
from featx.lock import CacheLock
from featx import pipeline
from featx.pipeline import extract_features
from tests.conftest import StubEmbedder, make_dataset, textured_image, write_image


def run_extract(data_dir, cache_path, embedder=None, **options):
    embedder = embedder or StubEmbedder()
    config = ExtractConfig(data_dir=data_dir, cache_path=cache_path,
                           model_handle=embedder.handle, **options)
    return extract_features(config, make_embedder=lambda: embedder, progress=False)


def test_first_run_embeds_every_image(dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    summary = run_extract(dataset, cache_path, batch_size=4)
    assert summary.n_images == 27
    assert summary.n_embedded == 27
    assert summary.skipped == []
    cache = featx.load_cache(cache_path)
    assert len(cache) == 27
    assert cache.label_names == ["cats", "dogs", "fish"]
    assert cache.embeddings.shape == (27, 96)
    assert cache.raw.shape == (27, 1024)
    assert sorted(set(cache.splits)) == ["test", "train"]
    assert len(set(cache.paths)) == 27
    assert not journal_dir(cache_path).exists()


def test_labels_follow_class_folders(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    cache = featx.load_cache(tmp_path / "c.h5")
    for path, label in zip(cache.paths, cache.labels):
        assert path.split("/")[1] == cache.label_names[label]


def test_rerun_embeds_nothing_and_loads_no_model(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    calls = []

    def make_embedder():
        calls.append(1)
        return StubEmbedder()

    config = ExtractConfig(data_dir=dataset, cache_path=tmp_path / "c.h5", model_handle=StubEmbedder.handle)
    summary = extract_features(config, make_embedder=make_embedder, progress=False)
    assert summary.n_cached == 27
    assert summary.n_embedded == 0
    assert calls == []
    assert not summary.model_loaded


def test_rerun_embeds_only_new_image(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    write_image(dataset / "train" / "cats" / "new.png", textured_image((210, 30, 30), 999))
    embedder = StubEmbedder()
    summary = run_extract(dataset, tmp_path / "c.h5", embedder)
    assert summary.n_embedded == 1
    assert embedder.n_images == 1
    assert len(featx.load_cache(tmp_path / "c.h5")) == 28


def test_changed_content_is_embedded_again(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    target = dataset / "train" / "dogs" / "dogs_1.png"
    write_image(target, textured_image((0, 0, 0), 12345))
    summary = run_extract(dataset, tmp_path / "c.h5")
    assert summary.n_embedded == 1
    cache = featx.load_cache(tmp_path / "c.h5")
    assert len(cache) == 27
    row = list(cache.paths).index("train/dogs/dogs_1.png")
    assert cache.embeddings[row][:48].max() < 0.3


def test_touched_file_is_hashed_not_embedded(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    target = dataset / "train" / "dogs" / "dogs_1.png"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    summary = run_extract(dataset, tmp_path / "c.h5")
    assert summary.n_embedded == 0
    assert summary.n_reused == 1
    cache = featx.load_cache(tmp_path / "c.h5")
    assert len(cache) == 27
    row = list(cache.paths).index("train/dogs/dogs_1.png")
    assert cache.mtime_ns[row] == 1_000_000_000


def test_duplicate_file_copies_embedding(dataset, tmp_path):
    source = dataset / "train" / "cats" / "cats_0.jpg"
    shutil.copy(source, dataset / "test" / "cats" / "copy.jpg")
    embedder = StubEmbedder()
    summary = run_extract(dataset, tmp_path / "c.h5", embedder)
    assert summary.n_embedded + summary.n_reused == 28
    assert summary.n_reused == 1
    cache = featx.load_cache(tmp_path / "c.h5")
    paths = list(cache.paths)
    a, b = paths.index("train/cats/cats_0.jpg"), paths.index("test/cats/copy.jpg")
    np.testing.assert_array_equal(cache.embeddings[a], cache.embeddings[b])
    assert cache.sha256[a] == cache.sha256[b]


def test_removed_image_marked_missing(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    (dataset / "test" / "fish" / "fish_0.jpg").unlink()
    summary = run_extract(dataset, tmp_path / "c.h5")
    assert summary.n_missing == 1
    cache = featx.load_cache(tmp_path / "c.h5")
    assert len(cache) == 26
    assert cache.missing == ["test/fish/fish_0.jpg"]
    assert len(featx.load_cache(tmp_path / "c.h5", include_missing=True)) == 27


def test_undecodable_file_skipped_and_recorded(dataset, tmp_path):
    (dataset / "train" / "cats" / "broken.png").write_bytes(b"this is not a png")
    summary = run_extract(dataset, tmp_path / "c.h5")
    assert summary.n_embedded == 27
    assert [path for path, _ in summary.skipped] == ["train/cats/broken.png"]
    cache = featx.load_cache(tmp_path / "c.h5")
    assert cache.skipped == [("train/cats/broken.png", "not an image: no decoder recognises the content")]
    assert len(cache) == 27


def test_all_files_undecodable_writes_nothing(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.jpg").write_bytes(b"")
    summary = run_extract(tmp_path / "data", tmp_path / "c.h5")
    assert summary.n_ok == 0
    assert summary.skipped == [("a/x.jpg", "empty file (0 bytes)")]
    assert not (tmp_path / "c.h5").exists()


class FailingEmbedder(StubEmbedder):
    """Raises on the n-th call, as a crash in the middle of a run would."""

    def __init__(self, fail_on_call):
        super().__init__()
        self.fail_on_call = fail_on_call

    def embed(self, images):
        if self.n_calls + 1 == self.fail_on_call:
            raise RuntimeError("simulated crash")
        return super().embed(images)


def test_crash_keeps_finished_batches(dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_extract(dataset, cache_path, FailingEmbedder(fail_on_call=3), batch_size=4)
    assert not cache_path.exists()
    interrupted = featx.load_cache(cache_path)
    assert len(interrupted) == 8

    embedder = StubEmbedder()
    summary = run_extract(dataset, cache_path, embedder, batch_size=4)
    assert summary.n_embedded == 19
    assert embedder.n_images == 19
    cache = featx.load_cache(cache_path)
    assert len(cache) == 27
    assert len(set(cache.paths)) == 27

    reference_path = tmp_path / "reference.h5"
    run_extract(dataset, reference_path, batch_size=4)
    reference = featx.load_cache(reference_path)
    order = np.argsort(cache.paths)
    reference_order = np.argsort(reference.paths)
    np.testing.assert_array_equal(cache.paths[order], reference.paths[reference_order])
    np.testing.assert_array_equal(cache.embeddings[order], reference.embeddings[reference_order])


class InterruptingEmbedder(StubEmbedder):
    """Raises KeyboardInterrupt on the third call, as Ctrl-C would."""

    def embed(self, images):
        if self.n_calls == 2:
            raise KeyboardInterrupt
        return super().embed(images)


def test_ctrl_c_saves_finished_batches(dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        run_extract(dataset, cache_path, InterruptingEmbedder(), batch_size=4)
    assert cache_path.exists()
    assert not journal_dir(cache_path).exists()
    assert len(featx.load_cache(cache_path)) == 8


def test_second_writer_rejected_naming_owner(dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    with CacheLock(cache_path):
        with pytest.raises(FeatxError, match=rf"Cache is in use by another featx process: .*held by process {os.getpid()}"):
            run_extract(dataset, cache_path)
    assert run_extract(dataset, cache_path).n_embedded == 27


def test_other_model_rejected(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")

    class OtherModel(StubEmbedder):
        handle = "stub://other"

    with pytest.raises(FeatxError, match="Cache written with another model.*--rebuild"):
        run_extract(dataset, tmp_path / "c.h5", OtherModel())


def test_rebuild_keeps_previous_cache_as_backup(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")

    class OtherModel(StubEmbedder):
        handle = "stub://other"

    summary = run_extract(dataset, tmp_path / "c.h5", OtherModel(), rebuild=True)
    assert summary.n_embedded == 27
    assert featx.load_cache(tmp_path / "c.h5").model_handle == "stub://other"
    backups = list(tmp_path.glob("c.h5.bak-*"))
    assert len(backups) == 1
    assert featx.load_cache(backups[0]).model_handle == StubEmbedder.handle


@pytest.mark.parametrize("flag,value", [("batch_size", 0), ("workers", -1)])
def test_invalid_numbers_rejected(dataset, tmp_path, flag, value):
    with pytest.raises(FeatxError, match=rf"Invalid value: --{flag.replace('_', '-')}\. Expected an integer of at least 1, got {value}"):
        run_extract(dataset, tmp_path / "c.h5", **{flag: value})
    assert not (tmp_path / "c.h5").exists()


def test_cache_readable_with_h5py_alone(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as file:
        assert file.attrs["format"] == "featx-cache"
        assert list(file.attrs["class_names"]) == ["cats", "dogs", "fish"]
        assert file["embeddings"].shape == (27, 96)
        assert file["embeddings"].dtype == np.float32
        assert file["embeddings"].maxshape == (None, 96)
        labels = file["labels"][:]
        paths = file["paths"].asstr()[:]
        assert all(p.split("/")[1] == file.attrs["class_names"][l] for p, l in zip(paths, labels))
        assert file["sha256"][0].decode().isalnum()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_in_batch_keeps_cache(dataset, tmp_path, monkeypatch):
    cache_path = tmp_path / "c.h5"
    run_extract(dataset, cache_path)
    before = cache_path.read_bytes()
    write_image(dataset / "train" / "cats" / "new.png", textured_image((1, 2, 3), 77))
    monkeypatch.setattr("featx.cache_writer.np.savez", _no_space)
    with pytest.raises(FeatxError, match=r"Cannot write cache: .*c\.h5 \(no space left on device\)\. The existing cache file is unchanged"):
        run_extract(dataset, cache_path)
    assert cache_path.read_bytes() == before
    assert len(featx.load_cache(cache_path)) == 27
    assert not list(tmp_path.glob(".c.h5.tmp-*"))


def test_disk_full_in_merge_keeps_cache_and_journal(dataset, tmp_path, monkeypatch):
    cache_path = tmp_path / "c.h5"
    run_extract(dataset, cache_path)
    before = cache_path.read_bytes()
    write_image(dataset / "train" / "cats" / "new.png", textured_image((1, 2, 3), 77))
    monkeypatch.setattr("featx.cache_writer._write_skipped", _no_space)
    with pytest.raises(FeatxError, match=r"no space left on device.*Batches finished in this run are kept in .*c\.h5\.journal"):
        run_extract(dataset, cache_path)
    assert cache_path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.tmp-*"))
    assert len(featx.load_cache(cache_path)) == 28

    monkeypatch.undo()
    embedder = StubEmbedder()
    summary = run_extract(dataset, cache_path, embedder)
    assert embedder.n_images == 0
    assert summary.n_cached == 28
    assert len(featx.load_cache(cache_path)) == 28
    assert not journal_dir(cache_path).exists()


def test_other_data_folder_rejected(dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    run_extract(dataset, cache_path)
    other = make_dataset(tmp_path / "other", per_class={"train": 2, "test": 1})
    with pytest.raises(FeatxError, match=r"Cache built from another data folder: .*c\.h5\. Expected .*data, got .*other\. Pass a new --cache path"):
        run_extract(other, cache_path)
    assert len(featx.load_cache(cache_path)) == 27


def test_moved_data_folder_accepted(dataset, tmp_path, caplog):
    cache_path = tmp_path / "c.h5"
    run_extract(dataset, cache_path)
    moved = tmp_path / "moved"
    dataset.rename(moved)
    embedder = StubEmbedder()
    summary = run_extract(moved, cache_path, embedder)
    assert summary.n_cached == 27
    assert embedder.n_images == 0
    assert "which no longer exists; treating" in caplog.text
    assert len(featx.load_cache(cache_path)) == 27


def _counting_reads(monkeypatch):
    """Count calls of the per-file worker function, thread-safely."""
    lock = threading.Lock()
    count = [0]
    read = pipeline._read_image

    def counting(*args):
        with lock:
            count[0] += 1
        return read(*args)

    monkeypatch.setattr(pipeline, "_read_image", counting)
    return count


def test_decoding_runs_ahead_while_model_loads(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class={"train": 10, "test": 4})  # 42 images
    monkeypatch.setattr(pipeline, "LOAD_PREFETCH_IMAGES", 20)
    reads = _counting_reads(monkeypatch)
    seen_at_load = []

    def slow_factory():
        # Wait until the decoding threads stop, as they do once the load-time
        # limit is reached, then note how far they went.
        last, deadline = -1, time.monotonic() + 10
        while reads[0] != last and time.monotonic() < deadline:
            last = reads[0]
            time.sleep(0.2)
        seen_at_load.append(reads[0])
        return StubEmbedder()

    config = ExtractConfig(data_dir=data, cache_path=tmp_path / "c.h5",
                           model_handle=StubEmbedder.handle, batch_size=4, workers=3)
    summary = extract_features(config, make_embedder=slow_factory, progress=False)
    # The model is loaded for the first image. By then 20 more are in
    # flight, far beyond the 3 batches of 4 held once it runs, and no more.
    assert seen_at_load == [21]
    assert summary.n_embedded == 42


def test_gate_admits_in_arrival_order_up_to_limit():
    gate = pipeline._Gate(1)
    running, peak, order = [0], [0], []
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append(i)
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    threads = []
    for i in range(6):
        thread = threading.Thread(target=gate.run, args=(work, i))
        thread.start()
        threads.append(thread)
        time.sleep(0.002)  # arrive in index order
    for thread in threads:
        thread.join(timeout=5)
    assert order == list(range(6))
    assert peak[0] == 1

    gate.set_limit(3)
    peak[0] = 0
    threads = [threading.Thread(target=gate.run, args=(work, i)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert peak[0] == 3


def test_ordered_map_follows_a_falling_limit():
    limit = [5]
    submitted = []

    class RecordingPool:
        def submit(self, function, item):
            submitted.append(item)
            future = concurrent.futures.Future()
            future.set_result(function(item))
            return future

    results = pipeline._ordered_map(RecordingPool(), lambda x: x * 10, range(12), lambda: limit[0])
    assert next(results) == 0
    assert len(submitted) == 6  # 5 up front, one more after the first result
    limit[0] = 2
    assert next(results) == 10  # 4 still pending: nothing new is submitted
    assert len(submitted) == 6
    assert [next(results) for _ in range(3)] == [20, 30, 40]
    assert len(submitted) == 7  # one pending left, so one more
    assert list(results) == [x * 10 for x in range(5, 12)]
    assert submitted == list(range(12))
