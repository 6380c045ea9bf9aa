"""Audit, leakage-aware evaluation, more heads and predict, on planted problems."""

import csv
import json
import shutil

import joblib
import numpy as np
import pytest
from PIL import Image

import featx
from featx import audit, fit
from featx.auditing import find_duplicates, run_audit
from featx.errors import FeatxError
from featx.evaluation import bootstrap_accuracy_ci, evaluate_head
from featx.heads import HEADS, get_head
from featx.prediction import load_head, predict_images
from tests.conftest import StubEmbedder, make_dataset, textured_image, write_image
from tests.test_pipeline import run_extract


@pytest.fixture
def planted(tmp_path):
    """A data set with two exact duplicates across splits, one within, and one near copy."""
    data = make_dataset(tmp_path / "data", per_class={"train": 8, "test": 4})
    shutil.copy(data / "train/cats/cats_0.jpg", data / "test/cats/leaked_exact.jpg")
    shutil.copy(data / "train/dogs/dogs_1.png", data / "test/dogs/leaked_exact.png")
    shutil.copy(data / "train/fish/fish_2.jpg", data / "train/fish/twin.jpg")
    brighter = np.asarray(Image.open(data / "train/fish/fish_3.png")).astype(int) + 2
    write_image(data / "test/fish/leaked_near.png", np.clip(brighter, 0, 255).astype(np.uint8))
    cache_path = tmp_path / "c.h5"
    run_extract(data, cache_path)
    return cache_path


def test_audit_finds_planted_duplicates(planted):
    cache = featx.load_cache(planted)
    result = run_audit(cache)
    assert sorted(map(sorted, result["exact_duplicate_groups"])) == [
        ["test/cats/leaked_exact.jpg", "train/cats/cats_0.jpg"],
        ["test/dogs/leaked_exact.png", "train/dogs/dogs_1.png"],
        ["train/fish/fish_2.jpg", "train/fish/twin.jpg"],
    ]
    assert [pair[:2] for pair in result["near_duplicate_pairs"]] == [
        ["test/fish/leaked_near.png", "train/fish/fish_3.png"]]
    assert sorted(result["cross_split_duplicates"]) == [
        ["test/cats/leaked_exact.jpg", "train/cats/cats_0.jpg", "exact"],
        ["test/dogs/leaked_exact.png", "train/dogs/dogs_1.png", "exact"],
        ["test/fish/leaked_near.png", "train/fish/fish_3.png", "near"],
    ]


def test_duplicate_groups_share_fold(planted):
    cache = featx.load_cache(planted)
    groups = find_duplicates(cache).groups(len(cache))
    paths = list(cache.paths)
    assert groups[paths.index("test/cats/leaked_exact.jpg")] == groups[paths.index("train/cats/cats_0.jpg")]
    assert groups[paths.index("test/fish/leaked_near.png")] == groups[paths.index("train/fish/fish_3.png")]
    assert len(np.unique(groups)) == len(cache) - 4


def test_fit_reports_with_and_without_leaked(planted, tmp_path, caplog):
    out = tmp_path / "run"
    assert fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out), "--exclude-leaked"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_leaked"] == 3
    assert metrics["n_test"] == 15
    assert metrics["test_without_leaked"]["n_test"] == 12
    assert sum(metrics["test_without_leaked"]["per_class"][c]["support"] for c in ["cats", "dogs", "fish"]) == 12
    low, high = metrics["test"]["accuracy_ci95"]
    assert low <= metrics["test"]["accuracy"] <= high
    low, high = metrics["cv"]["accuracy_ci95"]
    assert low <= metrics["cv"]["accuracy_mean"] <= high
    report = (out / "report.md").read_text()
    assert "python -m featx.fit --head mlp" in report
    assert "Held-out images that duplicate a training image: 3 (3 held-out/train pairs)" in report


def test_fit_warns_about_leaked_images(planted, caplog):
    evaluation = evaluate_head(featx.load_cache(planted), get_head("mlp"))
    assert evaluation.n_leaked == 3
    assert evaluation.test_without_leaked is None
    assert "3 test images duplicate a training image" in caplog.text


def _shortcut_dataset(root, shortcut):
    """Two classes; with shortcut, only file size and format tell them apart."""
    for i in range(12):
        colour_a, colour_b = ((120, 120, 120), (120, 120, 120)) if shortcut else ((200, 40, 40), (40, 40, 200))
        write_image(root / "a" / f"{i}.png", textured_image(colour_a, i, size=(64, 64)))
        if shortcut:
            write_image(root / "b" / f"{i}.jpg", textured_image(colour_b, 100 + i, size=(160, 240)))
        else:
            write_image(root / "b" / f"{i}.png", textured_image(colour_b, 100 + i, size=(64, 64)))
    return root


@pytest.mark.parametrize("shortcut", [True, False])
def test_metadata_shortcut_detected(tmp_path, shortcut):
    data = _shortcut_dataset(tmp_path / "data", shortcut)
    run_extract(data, tmp_path / "c.h5")
    result = run_audit(featx.load_cache(tmp_path / "c.h5"))
    if shortcut:
        assert result["metadata_baseline"]["accuracy_mean"] == 1.0
        assert result["shortcut_warning"] is True
    else:
        assert result["metadata_baseline"]["accuracy_mean"] <= 0.75
        assert result["shortcut_warning"] is False


def test_audit_cli_writes_json(planted, tmp_path, capsys):
    assert audit.main(["--cache", str(planted), "--out", str(tmp_path / "audit")]) == 0
    printed = capsys.readouterr().out
    assert "Exact duplicates: 3 groups, 6 files" in printed
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert set(saved) >= {"exact_duplicate_groups", "cross_split_duplicates", "metadata_baseline"}
    assert set(saved["metadata_baseline"]) >= {"accuracy_mean", "accuracy_std"}


def test_audit_cli_rejects_bad_threshold(planted, capsys):
    assert audit.main(["--cache", str(planted), "--threshold", "1.5"]) == 2
    assert "Invalid value: --threshold. Expected a number in (0, 1], got 1.5." in capsys.readouterr().err


def test_head_all_writes_comparison(planted, tmp_path, capsys):
    out = tmp_path / "all"
    assert fit.main(["--head", "all", "--cache", str(planted), "--out", str(out)]) == 0
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["head"] for row in rows] == list(HEADS)
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| head | features | test accuracy | 95% CI")
    assert len(table) == 2 + len(HEADS)
    for name in HEADS:
        assert (out / name / "head.joblib").exists()


def test_bootstrap_interval_width():
    y_true = np.zeros(100, int)
    y_pred = np.r_[np.zeros(90, int), np.ones(10, int)]
    low, high = bootstrap_accuracy_ci(y_true, y_pred)
    assert 0.82 <= low < 0.9 < high <= 0.96
    assert bootstrap_accuracy_ci(y_true, y_pred) == [low, high]


@pytest.mark.parametrize("head", ["mlp", "raw", "logreg"])
def test_predict_matches_fit(planted, tmp_path, head):
    out = tmp_path / head
    assert fit.main(["--head", head, "--cache", str(planted), "--out", str(out)]) == 0
    with open(out / "test_predictions.csv", newline="") as handle:
        expected = {row["path"]: row["predicted"] for row in csv.DictReader(handle)}
    data = tmp_path / "data"
    paths = [data / path for path in expected]
    results = predict_images(load_head(out / "head.joblib"), paths, StubEmbedder)
    assert {str(p.relative_to(data)): r["label"] for p, r in zip(paths, results)} == expected
    for result in results:
        assert sum(result[c] for c in ["cats", "dogs", "fish"]) == pytest.approx(1.0)


def test_predict_reuses_cache_without_model(planted, tmp_path):
    out = tmp_path / "mlp"
    fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out)])

    def no_model():
        raise AssertionError("the model must not be loaded")

    paths = sorted((tmp_path / "data" / "test" / "cats").iterdir())
    results = predict_images(load_head(out / "head.joblib"), paths, no_model, featx.load_cache(planted))
    assert all(r["label"] in {"cats", "dogs", "fish"} for r in results)


def test_predict_unreadable_file_gets_error_row(planted, tmp_path):
    out = tmp_path / "mlp"
    fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out)])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = tmp_path / "data" / "test" / "dogs" / "dogs_0.jpg"
    results = predict_images(load_head(out / "head.joblib"), [bad, good], StubEmbedder)
    assert results[0]["label"] == ""
    assert results[0]["error"] == "not an image: no decoder recognises the content"
    assert results[1]["label"] == "dogs"
    assert results[1]["error"] == ""


def test_head_from_other_version_rejected(planted, tmp_path):
    out = tmp_path / "mlp"
    fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out)])
    bundle = joblib.load(out / "head.joblib")
    bundle["featx_version"] = "9.9.0"
    joblib.dump(bundle, tmp_path / "old.joblib")
    with pytest.raises(FeatxError, match=r"Head written by another featx version: .*old\.joblib\. Expected featx 0\.1\.x, got featx 9\.9\.0"):
        load_head(tmp_path / "old.joblib")


def test_predict_rejects_cache_of_other_model(planted, tmp_path):
    out = tmp_path / "mlp"
    fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out)])
    bundle = load_head(out / "head.joblib")
    bundle["model_handle"] = "stub://other"
    with pytest.raises(FeatxError, match="Cache written with another model"):
        predict_images(bundle, [], StubEmbedder, featx.load_cache(planted))


def test_metadata_baseline_few_groups(planted):
    from featx.auditing import metadata_baseline

    cache = featx.load_cache(planted)
    # Duplicates can join images into fewer groups than folds; StratifiedGroupKFold
    # then cannot split, so the baseline uses fewer folds or none.
    three_groups = np.arange(len(cache)) % 3
    assert metadata_baseline(cache, three_groups)["folds"] == 3
    assert metadata_baseline(cache, np.zeros(len(cache), dtype=int)) is None


def test_head_loaded_from_its_run_folder(planted, tmp_path):
    out = tmp_path / "mlp"
    fit.main(["--head", "mlp", "--cache", str(planted), "--out", str(out)])
    assert load_head(out)["label_names"] == load_head(out / "head.joblib")["label_names"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatxError, match=r"No head in folder: .*empty\. Expected a head\.joblib file in it\. "
                       r"Pass a head\.joblib"):
        load_head(empty)
