"""Show and save what ``fit`` measured: tables for the terminal, JSON, PNG, the head."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from featx._version import __version__
from featx.evaluation import Evaluation
from featx.prediction import HEAD_FILE_NAME, HEAD_FORMAT_VERSION



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
        low, high = test["accuracy_ci95"]
        lines.append(
            f"accuracy {test['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f})   balanced accuracy "
            f"{test['balanced_accuracy']:.3f}   macro F1 {test['macro_f1']:.3f}"
        )
        width = max(len("class"), *(len(n) for n in evaluation.label_names))
        lines.append(f"{'class'.ljust(width)}  precision  recall     f1  support")
        for name, scores in test["per_class"].items():
            lines.append(
                f"{name.ljust(width)}  {scores['precision']:9.3f}  {scores['recall']:6.3f}  "
                f"{scores['f1']:5.3f}  {scores['support']:7d}"
            )
    clean = evaluation.test_without_leaked
    if clean is not None:
        low, high = clean["accuracy_ci95"]
        lines.append(
            f"Test split without the {evaluation.n_leaked} images that duplicate a training image "
            f"({clean['n_test']} images): accuracy {clean['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), "
            f"balanced accuracy {clean['balanced_accuracy']:.3f}, macro F1 {clean['macro_f1']:.3f}"
        )
    cv = evaluation.cv
    if cv is not None:
        low, high = cv["accuracy_ci95"]
        lines.append(
            f"{cv['folds']}-fold cross-validation over all {evaluation.n_train + evaluation.n_test} "
            f"images: accuracy {cv['accuracy_mean']:.3f} +/- {cv['accuracy_std']:.3f} (std; "
            f"95% CI of the mean {low:.3f}-{high:.3f}), balanced accuracy "
            f"{cv['balanced_accuracy_mean']:.3f}, macro F1 {cv['macro_f1_mean']:.3f}"
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
        "n_leaked": evaluation.n_leaked,
        "test_without_leaked": evaluation.test_without_leaked,
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
    """Write metrics.json, head.joblib and, with a test split, confusion_matrix.png and test_predictions.csv."""
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
    if evaluation.test is not None:
        written["predictions"] = out_dir / "test_predictions.csv"
        with open(written["predictions"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "true_label", "predicted"])
            for path, true, predicted in zip(evaluation.test_paths, evaluation.y_test, evaluation.y_pred):
                writer.writerow([path, evaluation.label_names[true], evaluation.label_names[predicted]])
    written["head"] = out_dir / HEAD_FILE_NAME
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


def comparison_rows(evaluations: list[Evaluation]) -> list[dict]:
    """Return one summary dict per head, for comparison.json and the tables."""
    rows = []
    for evaluation in evaluations:
        test, cv, clean = evaluation.test, evaluation.cv, evaluation.test_without_leaked
        rows.append({
            "head": evaluation.head.name,
            "features": evaluation.head.features,
            "test_accuracy": test and test["accuracy"],
            "test_accuracy_ci95": test and test["accuracy_ci95"],
            "test_balanced_accuracy": test and test["balanced_accuracy"],
            "test_macro_f1": test and test["macro_f1"],
            "test_without_leaked_accuracy": clean and clean["accuracy"],
            "test_without_leaked_accuracy_ci95": clean and clean["accuracy_ci95"],
            "cv_accuracy_mean": cv and cv["accuracy_mean"],
            "cv_accuracy_std": cv and cv["accuracy_std"],
            "cv_accuracy_ci95": cv and cv["accuracy_ci95"],
        })
    return rows


def format_comparison_markdown(rows: list[dict]) -> str:
    """Render the comparison of heads as a Markdown table."""
    def number(value):
        return "n/a" if value is None else f"{value:.3f}"

    def interval(value):
        return "n/a" if value is None else f"{value[0]:.3f}-{value[1]:.3f}"

    with_clean = any(row["test_without_leaked_accuracy"] is not None for row in rows)
    header = ["head", "features", "test accuracy", "95% CI", "balanced accuracy", "macro F1"]
    if with_clean:
        header += ["test acc. without leaked", "95% CI"]
    header += ["CV accuracy", "CV 95% CI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["head"], row["features"], number(row["test_accuracy"]),
                 interval(row["test_accuracy_ci95"]), number(row["test_balanced_accuracy"]),
                 number(row["test_macro_f1"])]
        if with_clean:
            cells += [number(row["test_without_leaked_accuracy"]),
                      interval(row["test_without_leaked_accuracy_ci95"])]
        cv = "n/a" if row["cv_accuracy_mean"] is None else \
            f"{row['cv_accuracy_mean']:.3f} ± {row['cv_accuracy_std']:.3f}"
        cells += [cv, interval(row["cv_accuracy_ci95"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path, evaluations: list[Evaluation], audit: dict, command: str, cache
) -> Path:
    """Write report.md: command, version, metrics, confusion matrices and audit findings."""
    import datetime

    from featx.auditing import format_audit_summary

    lines = [
        "# featx report",
        "",
        f"- command: `{command}`",
        f"- featx {__version__}, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- cache: `{cache.path}` ({len(cache)} images, classes {', '.join(cache.label_names)})",
        f"- model: `{cache.model_handle}`",
        "",
        "## Metrics",
        "",
        format_comparison_markdown(comparison_rows(evaluations)),
        "",
        "Test accuracy intervals are 95% percentile bootstrap intervals over the test "
        "images (2000 resamples); CV intervals are Student t intervals of the fold mean.",
    ]
    for evaluation in evaluations:
        if evaluation.test is None:
            continue
        prefix = "" if len(evaluations) == 1 else f"{evaluation.head.name}/"
        lines += [
            "",
            f"## Confusion matrix: {evaluation.head.name} (test split)",
            "",
            "```",
            format_confusion_matrix(evaluation.test["confusion_matrix"], evaluation.label_names),
            "```",
            "",
            f"![{evaluation.head.name} confusion matrix]({prefix}confusion_matrix.png)",
        ]
    lines += ["", "## Audit", "", "```", format_audit_summary(audit), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
