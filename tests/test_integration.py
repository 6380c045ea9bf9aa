"""The real MobileNetV2 on the real Covid-19 X-ray set.

Needs FEATX_DATA_DIR (the data folder) and TFHUB_CACHE_DIR (a TF Hub cache
holding the default model); skipped without them unless
FEATX_REQUIRE_INTEGRATION=1, which CI sets.
"""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.cache import journal_dir

pytestmark = pytest.mark.integration

CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


def extract_command(data_dir, cache_path, *extra):
    return [sys.executable, "-m", "featx.extract", str(data_dir), "--cache", str(cache_path),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def real_cache(real_data_dir, tmp_path_factory):
    cache_path = tmp_path_factory.mktemp("real") / "embeddings.h5"
    result = subprocess.run(extract_command(real_data_dir, cache_path), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return cache_path, result.stderr


def test_real_extract_counts(real_cache):
    cache_path, log = real_cache
    assert "Done: 317 images, 3 classes" in log
    assert "0 skipped" in log
    cache = featx.load_cache(cache_path)
    assert len(cache) == 317
    assert cache.skipped == []
    assert cache.label_names == CLASSES
    assert np.bincount(cache.labels).tolist() == [137, 90, 90]
    assert cache.embeddings.shape == (317, 1280)
    assert cache.embeddings.dtype == np.float32
    assert np.isfinite(cache.embeddings).all()
    assert (cache.embeddings >= 0).all()  # pooled ReLU6 activations
    assert len(cache.split("test")) == 66
    assert len(cache.split("train")) == 251
    assert cache.model_handle.endswith("mobilenet_v2_100_224/feature_vector/5")


def test_real_fit_mlp_accuracy(real_cache, tmp_path):
    cache_path, _ = real_cache
    from featx import fit

    out = tmp_path / "mlp"
    assert fit.main(["--head", "mlp", "--cache", str(cache_path), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 251
    assert metrics["n_test"] == 66
    assert metrics["test"]["accuracy"] >= 0.92
    assert metrics["cv"]["folds"] == 5
    assert metrics["cv"]["accuracy_mean"] >= 0.90
    assert np.sum(metrics["test"]["confusion_matrix"]) == 66


def test_real_fit_raw_baseline(real_cache, tmp_path):
    cache_path, _ = real_cache
    from featx import fit

    out = tmp_path / "raw"
    assert fit.main(["--head", "raw", "--cache", str(cache_path), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Well above chance (0.39 for always "Covid") but a baseline, not a target.
    assert metrics["test"]["accuracy"] > 0.6
    assert (out / "confusion_matrix.png").exists()


def test_real_rerun_loads_no_model(real_cache, real_data_dir):
    cache_path, _ = real_cache
    result = subprocess.run(extract_command(real_data_dir, cache_path), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "0 embedded, 0 copied by content hash, 317 already cached" in result.stderr
    assert "Loaded the model" not in result.stderr


def test_real_sigkill_then_rerun(real_cache, real_data_dir, tmp_path):
    reference = featx.load_cache(real_cache[0])
    cache_path = tmp_path / "killed.h5"
    process = subprocess.Popen(extract_command(real_data_dir, cache_path, "--batch-size", "8"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(list(journal_dir(cache_path).glob("part-*.npz"))) < 3:
        assert process.poll() is None, "extract ended before it could be killed"
        assert time.monotonic() < deadline, "no batch finished in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    partial = featx.load_cache(cache_path)
    assert 24 <= len(partial) < 317

    result = subprocess.run(extract_command(real_data_dir, cache_path, "--batch-size", "8"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stderr  # the journal of the killed run was found
    cache = featx.load_cache(cache_path)
    assert len(cache) == 317
    assert len(set(cache.paths)) == 317
    order, reference_order = np.argsort(cache.paths), np.argsort(reference.paths)
    np.testing.assert_array_equal(cache.paths[order], reference.paths[reference_order])
    np.testing.assert_array_equal(cache.labels[order], reference.labels[reference_order])
    # Batches are composed differently after the restart; oneDNN kernels may
    # then round differently in the last bits.
    np.testing.assert_allclose(cache.embeddings[order], reference.embeddings[reference_order],
                               rtol=1e-4, atol=1e-5)


def test_real_audit_finds_leaked_test_images(real_cache, tmp_path):
    cache_path, _ = real_cache
    from featx import audit

    assert audit.main(["--cache", str(cache_path), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "audit.json").read_text())
    assert len(result["exact_duplicate_groups"]) == 10
    leaked = {held_out for held_out, _, _ in result["cross_split_duplicates"]}
    assert len(leaked) == 6
    assert all(path.startswith("test/Covid/") for path in leaked)
    assert result["metadata_baseline"]["accuracy_mean"] > result["majority_rate"]


def test_real_predict_matches_fit(real_cache, real_data_dir, tmp_path):
    cache_path, _ = real_cache
    from featx import fit

    out = tmp_path / "mlp"
    assert fit.main(["--head", "mlp", "--cache", str(cache_path), "--out", str(out)]) == 0
    with open(out / "test_predictions.csv", newline="") as handle:
        expected = {row["path"]: row["predicted"] for row in csv.DictReader(handle)}
    assert len(expected) == 66

    # No --cache: every test image is decoded and embedded again by predict.
    result = subprocess.run(
        [sys.executable, "-m", "featx.predict", "--head", str(out / "head.joblib"),
         str(real_data_dir / "test"), "--out", str(tmp_path / "predictions.csv")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 66
    predicted = {str(Path(row["path"]).relative_to(real_data_dir).as_posix()): row["label"] for row in rows}
    assert predicted == expected
