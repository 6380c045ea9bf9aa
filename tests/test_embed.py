"""The TF Hub loading path, with a tiny SavedModel of the real model's contract."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import featx
from featx.errors import FeatxError


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A SavedModel mapping float32 (n, 224, 224, 3) in [0, 1] to float32 (n, 1280)."""
    tf = pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("tiny_model")
    projection = np.random.default_rng(0).normal(size=(8 * 8 * 3, 1280)).astype(np.float32)

    class TinyFeatureVector(tf.Module):
        def __init__(self):
            super().__init__()
            self.projection = tf.Variable(projection, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            pooled = tf.nn.avg_pool2d(images, ksize=28, strides=28, padding="VALID")
            flat = tf.reshape(pooled, [-1, 8 * 8 * 3])
            return tf.nn.relu(tf.matmul(flat, self.projection))

    tf.saved_model.save(TinyFeatureVector(), str(folder))
    return folder


def test_hub_embedder_contract(tiny_model_dir):
    from featx.embed import HubEmbedder

    embedder = HubEmbedder(str(tiny_model_dir), device="cpu")
    assert embedder.embedding_size == 1280
    white = np.full((2, 224, 224, 3), 255, np.uint8)
    black = np.zeros((1, 224, 224, 3), np.uint8)
    out_white = embedder.embed(white)
    assert out_white.shape == (2, 1280)
    assert out_white.dtype == np.float32
    # The model receives [0, 1], so white pixels pool to exactly 1.0.
    expected = np.maximum(np.ones(192, np.float32) @ embedder._model.projection.numpy(), 0)
    np.testing.assert_allclose(out_white[0], expected, rtol=1e-4)
    assert not embedder.embed(black).any()


def test_missing_model_folder_error(tmp_path):
    from featx.embed import HubEmbedder

    with pytest.raises(FeatxError, match="Model folder not found: .*no_model"):
        HubEmbedder(str(tmp_path / "no_model"))


def test_extract_cli_with_local_model(tiny_model_dir, dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    command = [sys.executable, "-m", "featx.extract", str(dataset), "--cache", str(cache_path),
               "--model", str(tiny_model_dir), "--batch-size", "8", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Done: 27 images, 3 classes, 27 embedded" in result.stderr
    cache = featx.load_cache(cache_path)
    assert cache.embeddings.shape == (27, 1280)
    assert cache.model_handle == str(tiny_model_dir)

    again = subprocess.run(command + ["--summary-json", str(tmp_path / "summary.json")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 embedded, 0 copied by content hash, 27 already cached" in again.stderr
    assert "Loaded the model" not in again.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_images"] == 27
    assert summary["n_cached"] == 27
    assert summary["model_loaded"] is False
    assert summary["load_seconds"] == 0.0
    assert summary["skipped"] == []


def test_extract_cli_bad_folder_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "featx.extract", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c.h5")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: Data folder not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_extract_cli_folder_not_a_model(dataset, tmp_path):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "featx.extract", str(dataset), "--cache", str(tmp_path / "c.h5"),
         "--model", str(not_a_model), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: Cannot load model: {not_a_model}." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_two_extracts_on_one_cache(tiny_model_dir, dataset, tmp_path):
    cache_path = tmp_path / "c.h5"
    command = [sys.executable, "-m", "featx.extract", str(dataset), "--cache", str(cache_path),
               "--model", str(tiny_model_dir), "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owner = cache_path.with_name("c.h5.owner")
    deadline = time.monotonic() + 120
    while not owner.exists():
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)

    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"Cache is in use by another featx process: {cache_path}" in second.stderr
    assert f"held by process {first.pid}" in second.stderr

    _, first_log = first.communicate(timeout=300)
    assert first.returncode == 0, first_log
    cache = featx.load_cache(cache_path)
    assert len(cache) == 27
    assert len(set(cache.paths)) == 27
