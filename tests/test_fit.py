"""fit on generated caches: metrics, outputs, determinism and hard cases."""

import json
import logging

import joblib
import numpy as np
import pytest

import featx
from featx import fit
from featx.evaluation import classification_metrics, evaluate_head
from featx.errors import FeatxError
from featx.heads import get_head
from featx.reporting import format_confusion_matrix
from tests.conftest import make_dataset
from tests.test_pipeline import run_extract


@pytest.fixture
def cache_path(tmp_path):
    data = make_dataset(tmp_path / "data", per_class={"train": 10, "test": 4})
    path = tmp_path / "c.h5"
    run_extract(data, path)
    return path


@pytest.mark.parametrize("head", ["mlp", "raw"])
def test_fit_cli_writes_outputs(cache_path, tmp_path, head, capsys):
    out = tmp_path / "run"
    assert fit.main(["--head", head, "--cache", str(cache_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "true \\ predicted" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head"] == head
    assert metrics["labels"] == ["cats", "dogs", "fish"]
    assert metrics["n_train"] == 30
    assert metrics["n_test"] == 12
    matrix = np.array(metrics["test"]["confusion_matrix"])
    assert matrix.sum(axis=1).tolist() == [4, 4, 4]
    assert metrics["test"]["accuracy"] == pytest.approx(np.trace(matrix) / 12)
    # Class colours are far apart; raw pixels with 30 training images still
    # make a few mistakes, embeddings none.
    assert metrics["test"]["accuracy"] >= (1.0 if head == "mlp" else 0.75)
    assert metrics["test"]["per_class"]["dogs"]["support"] == 4
    assert metrics["cv"]["folds"] == 5
    assert metrics["cv"]["accuracy_mean"] >= (1.0 if head == "mlp" else 0.75)
    assert metrics["fit_seconds"] > 0
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    saved = joblib.load(out / "head.joblib")
    assert saved["label_names"] == ["cats", "dogs", "fish"]
    assert saved["model_handle"] == "stub://grid-means"
    cache = featx.load_cache(cache_path)
    X = cache.embeddings if head == "mlp" else cache.raw
    assert saved["estimator"].predict(X).shape == (42,)
    if head == "mlp":
        assert list(saved["estimator"].predict(X)) == list(cache.labels)


def test_same_cache_same_numbers(cache_path):
    cache = featx.load_cache(cache_path)
    cache.embeddings = cache.embeddings + np.random.default_rng(0).normal(0, 0.2, cache.embeddings.shape).astype(np.float32)
    first = evaluate_head(cache, get_head("mlp"))
    second = evaluate_head(cache, get_head("mlp"))
    assert first.test == second.test
    assert first.cv["accuracy"] == second.cv["accuracy"]


def test_metrics_against_hand_count():
    metrics = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["c"]["recall"] == 0.0


def test_confusion_table_has_class_names():
    table = format_confusion_matrix([[5, 1], [0, 7]], ["Covid", "Viral Pneumonia"])
    lines = table.splitlines()
    assert lines[0].split()[-2:] == ["Viral", "Pneumonia"]
    assert lines[1].split() == ["Covid", "5", "1"]
    assert lines[2].split() == ["Viral", "Pneumonia", "0", "7"]


def test_small_class_lowers_folds(tmp_path, caplog):
    data = make_dataset(tmp_path / "data", per_class={"": 6}, splits=("",))
    (data / "fish" / "fish_3.png").unlink()
    for extra in ["fish_4.jpg", "fish_5.png"]:
        (data / "fish" / extra).unlink()
    run_extract(data, tmp_path / "c.h5")
    cache = featx.load_cache(tmp_path / "c.h5")
    with caplog.at_level(logging.WARNING, logger="featx"):
        evaluation = evaluate_head(cache, get_head("mlp"))
    assert evaluation.cv["folds"] == 3
    assert "Using 3 cross-validation folds instead of 5: class fish has only 3 images" in caplog.text
    assert evaluation.test is None
    assert evaluation.n_test == 0


def test_single_class_rejected(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("",))
    for label in ["dogs", "fish"]:
        for path in (data / label).iterdir():
            path.unlink()
        (data / label).rmdir()
    run_extract(data, tmp_path / "c.h5")
    with pytest.raises(FeatxError, match="Too few classes to fit a classifier.*Expected at least 2 classes, got 1 \\(cats\\)"):
        evaluate_head(featx.load_cache(tmp_path / "c.h5"), get_head("mlp"))


def test_test_split_missing_class_warns(tmp_path, caplog):
    data = make_dataset(tmp_path / "data")
    for path in (data / "test" / "fish").iterdir():
        path.unlink()
    (data / "test" / "fish").rmdir()
    run_extract(data, tmp_path / "c.h5")
    with caplog.at_level(logging.WARNING, logger="featx"):
        evaluation = evaluate_head(featx.load_cache(tmp_path / "c.h5"), get_head("mlp"))
    assert "The test split has no images of class fish" in caplog.text
    assert evaluation.test["per_class"]["fish"]["support"] == 0


def test_unknown_head_rejected(cache_path, capsys):
    with pytest.raises(SystemExit):
        fit.main(["--head", "forest", "--cache", str(cache_path)])
    assert "invalid choice: 'forest'" in capsys.readouterr().err


def test_missing_cache_exit_status(tmp_path, capsys):
    assert fit.main(["--head", "mlp", "--cache", str(tmp_path / "none.h5")]) == 2
    assert "error: Cache not found" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--folds", "1"], "Invalid value: --folds. Expected an integer of at least 2, got 1."),
    (["--folds", "0"], "Invalid value: --folds. Expected an integer of at least 2, got 0."),
    (["--random-state", "-1"], "Invalid value: --random-state. Expected an integer of at least 0, got -1."),
])
def test_invalid_fit_flags(cache_path, capsys, flags, message):
    assert fit.main(["--head", "mlp", "--cache", str(cache_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_out_path_is_file_rejected_before_fitting(cache_path, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert fit.main(["--head", "mlp", "--cache", str(cache_path), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"error: Output path is a file: --out {target}." in err
    assert "Traceback" not in err


def test_cache_path_is_folder_rejected(tmp_path, capsys):
    assert fit.main(["--head", "mlp", "--cache", str(tmp_path)]) == 2
    assert f"error: Cache path is a folder: {tmp_path}." in capsys.readouterr().err


def test_head_all_skips_head_that_cannot_fit(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class={"": 6}, splits=("",))
    for extra in ["fish_2.jpg", "fish_3.png", "fish_4.jpg", "fish_5.png"]:
        (data / "fish" / extra).unlink()
    run_extract(data, tmp_path / "c.h5")
    out = tmp_path / "all"
    assert fit.main(["--head", "all", "--cache", str(tmp_path / "c.h5"), "--out", str(out)]) == 0
    assert "error: Head svm skipped" in capsys.readouterr().err
    rows = json.loads((out / "comparison.json").read_text())
    assert "svm" not in [row["head"] for row in rows]
    assert "mlp" in [row["head"] for row in rows]
