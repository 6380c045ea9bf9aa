"""Evaluate a head on a cache: held-out test split and group-aware cross-validation.

When the cache has a ``test`` split, the head is fitted on every other split
and scored on ``test``. Cross-validation always runs too, over every image,
with stratified folds that keep each group of exact or near duplicates in one
fold, so that a duplicated picture cannot be both trained on and scored.
Test images that duplicate a training image are reported, and can be left out
of a second test score.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings

import numpy as np

from featx.auditing import DuplicateReport, find_duplicates, leaked_rows
from featx.cache import FeatureCache
from featx.errors import FeatxError
from featx.heads import Head, feature_matrix

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
    """Everything ``fit`` reports about one head.

    Attributes
    ----------
    head : Head
    label_names : list of str
        Class names; index i is label i in every array and matrix.
    estimator : fitted scikit-learn estimator
        Fitted on the training splits, or on every image when there is no test split.
    n_train, n_test : int
    test : dict or None
        Test-split metrics (see :func:`classification_metrics`) with
        ``accuracy_ci95``; None without a test split.
    test_without_leaked : dict or None
        The same on the test split minus images that duplicate a training
        image; None unless requested and such images exist.
    n_leaked : int
        Test images that duplicate (exactly or nearly) a training image.
    y_test, y_pred : ndarray of shape (n_test,), int
    test_paths : ndarray of shape (n_test,), str
    cv : dict or None
        ``folds``, ``accuracy_mean``, ``accuracy_std``, ``accuracy_ci95``,
        ``balanced_accuracy_mean``, ``macro_f1_mean`` and per-fold
        ``accuracy``; None when a class has fewer than 2 images.
    fit_seconds : float
        Time to fit the reported estimator.
    cv_seconds : float
    random_state : int
    """

    head: Head
    label_names: list[str]
    estimator: object
    n_train: int
    n_test: int
    test: dict | None
    test_without_leaked: dict | None
    n_leaked: int
    y_test: np.ndarray
    y_pred: np.ndarray
    test_paths: np.ndarray
    cv: dict | None
    fit_seconds: float
    cv_seconds: float
    random_state: int


def evaluate_head(
    cache: FeatureCache, head: Head, n_folds: int = 5, random_state: int = 0,
    duplicates: DuplicateReport | None = None, exclude_leaked: bool = False,
) -> Evaluation:
    """Fit ``head`` on the cache and measure it on the test split and by cross-validation.

    Parameters
    ----------
    cache : FeatureCache
    head : Head
    n_folds : int, default 5
        Cross-validation folds; lowered, with a warning, when a class has fewer images.
    random_state : int, default 0
        Seed of the estimator, the fold assignment and the bootstrap.
    duplicates : DuplicateReport, optional
        Computed with :func:`featx.auditing.find_duplicates` when not given.
    exclude_leaked : bool, default False
        Also score the test split without the images that duplicate a
        training image.

    Raises
    ------
    FeatxError
        When the cache has fewer than two classes, or a test split but no
        images to train on.
    """
    if len(cache.label_names) < 2:
        raise FeatxError(
            "Too few classes to fit a classifier",
            str(cache.path),
            expected="at least 2 classes",
            got=f"{len(cache.label_names)} ({', '.join(cache.label_names)})",
            hint="Add a class folder to the data folder and run extract again.",
        )
    X = feature_matrix(cache, head.features)
    y = cache.labels
    is_test = cache.splits == "test"
    if duplicates is None:
        duplicates = find_duplicates(cache)
    leaked = leaked_rows(cache, duplicates, "test")
    test_without_leaked = None

    if leaked.any():
        logger.warning(
            "%d test images duplicate a training image (exact or near copies), which "
            "inflates the test score: %s%s%s", int(leaked.sum()),
            ", ".join(str(p) for p in cache.paths[leaked][:5]),
            f" and {int(leaked.sum()) - 5} more" if leaked.sum() > 5 else "",
            "" if exclude_leaked else ". --exclude-leaked also scores the test split without them",
        )
    if is_test.any():
        train = ~is_test
        _check_training_set(cache, train)
        _warn_absent_classes(cache, is_test, "test split")
        estimator, fit_seconds = _fit(head, X[train], y[train], random_state)
        y_pred = estimator.predict(X[is_test])
        test = classification_metrics(y[is_test], y_pred, cache.label_names)
        test["accuracy_ci95"] = bootstrap_accuracy_ci(y[is_test], y_pred, random_state)
        n_train, n_test = int(train.sum()), int(is_test.sum())
        if exclude_leaked and leaked.any():
            clean = ~leaked[is_test]
            test_without_leaked = classification_metrics(y[is_test][clean], y_pred[clean], cache.label_names)
            test_without_leaked["accuracy_ci95"] = bootstrap_accuracy_ci(
                y[is_test][clean], y_pred[clean], random_state)
            test_without_leaked["n_test"] = int(clean.sum())
    else:
        logger.info("The cache has no test split: reporting cross-validation only")
        estimator, fit_seconds = _fit(head, X, y, random_state)
        y_pred = np.array([], dtype=np.int64)
        test = None
        n_train, n_test = len(y), 0

    started = time.perf_counter()
    groups = duplicates.groups(len(y))
    cv = cross_validate_head(head, X, y, groups, cache.label_names, n_folds, random_state)
    return Evaluation(
        head=head, label_names=list(cache.label_names), estimator=estimator,
        n_train=n_train, n_test=n_test, test=test, test_without_leaked=test_without_leaked,
        n_leaked=int(leaked.sum()), y_test=y[is_test], y_pred=y_pred,
        test_paths=cache.paths[is_test], cv=cv, fit_seconds=fit_seconds,
        cv_seconds=time.perf_counter() - started, random_state=random_state,
    )


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Return accuracy, balanced accuracy, macro F1, the confusion matrix and per-class scores.

    The confusion matrix has rows = true class and columns = predicted class,
    both in ``label_names`` order. A class absent from ``y_true`` gets recall
    and F1 of 0 and is left out of balanced accuracy.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # Balanced accuracy warns when y_pred has a class that y_true lacks.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
    }


def cross_validate_head(
    head: Head, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
    label_names: list[str], n_folds: int, random_state: int,
) -> dict | None:
    """Run stratified, group-aware k-fold cross-validation; None when impossible."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_validate

    counts = np.bincount(y, minlength=len(label_names))
    smallest = int(counts[counts > 0].min())
    n_groups = len(np.unique(groups))
    if n_groups < min(n_folds, smallest):
        logger.warning(
            "Using %d cross-validation folds: duplicates join the %d images into only %d groups",
            max(n_groups, 1), len(y), n_groups,
        )
    folds = usable_folds(y, groups, n_folds)
    if folds < 2:
        rare = [label_names[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
        logger.warning(
            "Cross-validation skipped: %s",
            f"class {', '.join(rare)} has fewer than 2 images" if rare
            else "fewer than 2 groups of distinct images",
        )
        return None
    if folds < n_folds and smallest < n_folds:
        rare = label_names[int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))]
        logger.warning(
            "Using %d cross-validation folds instead of %d: class %s has only %d images",
            folds, n_folds, rare, smallest,
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
    scores = cross_validate(
        head.build(random_state), X, y, groups=groups, cv=splitter,
        scoring=("accuracy", "balanced_accuracy", "f1_macro"),
    )
    accuracy = scores["test_accuracy"]
    return {
        "folds": folds,
        "accuracy_mean": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std()),
        "accuracy_ci95": mean_ci95(accuracy),
        "balanced_accuracy_mean": float(scores["test_balanced_accuracy"].mean()),
        "macro_f1_mean": float(scores["test_f1_macro"].mean()),
        "accuracy": [float(a) for a in accuracy],
    }


def usable_folds(y: np.ndarray, groups: np.ndarray, n_folds: int) -> int:
    """Return the most stratified group folds possible, at most ``n_folds``.

    Each fold needs an image of every class and a group of its own, so the
    count is capped by the smallest class and by the number of groups. A
    result below 2 means cross-validation is impossible.
    """
    counts = np.bincount(y)
    return min(n_folds, int(counts[counts > 0].min()), len(np.unique(groups)))


def bootstrap_accuracy_ci(
    y_true: np.ndarray, y_pred: np.ndarray, random_state: int = 0, n_resamples: int = 2000
) -> list[float]:
    """Return the 95% percentile bootstrap interval of accuracy, resampling test images."""
    if len(y_true) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(random_state)
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    samples = rng.integers(0, len(correct), size=(n_resamples, len(correct)))
    accuracies = correct[samples].mean(axis=1)
    low, high = np.percentile(accuracies, [2.5, 97.5])
    return [float(low), float(high)]


def mean_ci95(values: np.ndarray) -> list[float]:
    """Return a Student t 95% interval for the mean of per-fold scores.

    Folds share most of their training images, so the fold scores are not
    independent and this interval is somewhat too narrow. It still shows how
    much the mean moves with the fold assignment.
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return [float("nan"), float("nan")]
    half_width = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return [float(values.mean() - half_width), float(values.mean() + half_width)]


def _fit(head: Head, X: np.ndarray, y: np.ndarray, random_state: int):
    estimator = head.build(random_state)
    started = time.perf_counter()
    estimator.fit(X, y)
    return estimator, time.perf_counter() - started


def _check_training_set(cache: FeatureCache, train: np.ndarray) -> None:
    if not train.any():
        raise FeatxError(
            "No training images",
            str(cache.path),
            expected="images in a train (or val) split beside the test split",
            got="only test images",
            hint="Add a train folder to the data folder and run extract again.",
        )
    present = set(cache.labels[train].tolist())
    if len(present) < 2:
        raise FeatxError(
            "Too few classes in the training splits",
            str(cache.path),
            expected="at least 2 classes",
            got=", ".join(cache.label_names[i] for i in sorted(present)),
        )
    _warn_absent_classes(cache, train, "training splits")


def _warn_absent_classes(cache: FeatureCache, rows: np.ndarray, where: str) -> None:
    present = set(cache.labels[rows].tolist())
    absent = [name for i, name in enumerate(cache.label_names) if i not in present]
    if absent:
        logger.warning("The %s has no images of class %s", where, ", ".join(absent))
