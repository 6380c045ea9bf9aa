"""Show and save what ``fit`` measured: tables for the terminal, JSON, PNG, the head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featx._version import __version__
from featx.evaluation import Evaluation

#: Version of the dictionary saved in head.joblib.
HEAD_FORMAT_VERSION = 1


def format_confusion_matrix(matrix: list[list[int]], label_names: list[str]) -> str:
    """Render a confusion matrix (rows = true class, columns = predicted) as a text table."""
    corner = "true \\ predicted"
    first = max(len(corner), *(len(name) for name in label_names))
    widths = [max(len(name), 4) for name in label_names]
    lines = [
        corner.ljust(first) + "  " + "  ".join(n.rjust(w) for n, w in zip(label_names, widths))
    ]
    for name, row in zip(label_names, matrix):
        cells = "  ".join(str(count).rjust(w) for count, w in zip(row, widths))
        lines.append(name.ljust(first) + "  " + cells)
    return "\n".join(lines)


def format_report(evaluation: Evaluation) -> str:
    """Render the test metrics, per-class scores and CV summary for the terminal."""
    lines = [f"== head {evaluation.head.name}: {evaluation.head.description} =="]
    test = evaluation.test
    if test is not None:
        lines.append(
            f"Test split ({evaluation.n_test} images, trained on {evaluation.n_train}):"
        )
        lines.append(format_confusion_matrix(test["confusion_matrix"], evaluation.label_names))
        lines.append("")
        lines.append(
            f"accuracy {test['accuracy']:.3f}   balanced accuracy "
            f"{test['balanced_accuracy']:.3f}   macro F1 {test['macro_f1']:.3f}"
        )
        width = max(len("class"), *(len(n) for n in evaluation.label_names))
        lines.append(f"{'class'.ljust(width)}  precision  recall     f1  support")
        for name, scores in test["per_class"].items():
            lines.append(
                f"{name.ljust(width)}  {scores['precision']:9.3f}  {scores['recall']:6.3f}  "
                f"{scores['f1']:5.3f}  {scores['support']:7d}"
            )
    cv = evaluation.cv
    if cv is not None:
        lines.append(
            f"{cv['folds']}-fold cross-validation over all {evaluation.n_train + evaluation.n_test} "
            f"images: accuracy {cv['accuracy_mean']:.3f} +/- {cv['accuracy_std']:.3f} (std), "
            f"balanced accuracy {cv['balanced_accuracy_mean']:.3f}, macro F1 {cv['macro_f1_mean']:.3f}"
        )
    lines.append(f"fit {evaluation.fit_seconds:.2f} s, cross-validation {evaluation.cv_seconds:.2f} s")
    return "\n".join(lines)


def metrics_dict(evaluation: Evaluation, cache_path: Path, model_handle: str) -> dict:
    return {
        "head": evaluation.head.name,
        "features": evaluation.head.features,
        "labels": evaluation.label_names,
        "n_train": evaluation.n_train,
        "n_test": evaluation.n_test,
        "test": evaluation.test,
        "cv": evaluation.cv,
        "fit_seconds": evaluation.fit_seconds,
        "cv_seconds": evaluation.cv_seconds,
        "random_state": evaluation.random_state,
        "cache": str(cache_path),
        "model_handle": model_handle,
        "featx_version": __version__,
    }


def save_confusion_matrix_png(
    matrix: list[list[int]], label_names: list[str], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=label_names)
    figure, axes = plt.subplots(figsize=(1.6 * len(label_names) + 2.5, 1.4 * len(label_names) + 2))
    display.plot(ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save_outputs(evaluation: Evaluation, out_dir: Path, cache) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png (with a test split) and head.joblib."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    metrics = metrics_dict(evaluation, cache.path, cache.model_handle)
    written["metrics"] = out_dir / "metrics.json"
    written["metrics"].write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if evaluation.test is not None:
        written["confusion_matrix"] = out_dir / "confusion_matrix.png"
        save_confusion_matrix_png(
            evaluation.test["confusion_matrix"], evaluation.label_names, written["confusion_matrix"],
            f"{evaluation.head.name}: test accuracy {evaluation.test['accuracy']:.3f}",
        )
    written["head"] = out_dir / "head.joblib"
    joblib.dump(
        {
            "format_version": HEAD_FORMAT_VERSION,
            "featx_version": __version__,
            "head": evaluation.head.name,
            "features": evaluation.head.features,
            "estimator": evaluation.estimator,
            "label_names": evaluation.label_names,
            "model_handle": cache.model_handle,
            "embedding_size": cache.embedding_size,
            "input_size": cache.input_size,
            "raw_size": cache.raw_size,
        },
        written["head"],
    )
    return written
