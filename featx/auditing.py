"""Leakage and shortcut checks on a cache: duplicates and a metadata-only baseline.

Two silent failures inflate the figures of small medical image sets. The same
picture can sit in both train and test (or in two cross-validation folds), and
the classes can differ in something other than the disease (scanner, file
format, image size), so that a model scores well by recognising the source.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from featx.cache import FeatureCache

logger = logging.getLogger(__name__)

#: Cosine similarity of MobileNetV2 embeddings above which two different files
#: count as near-duplicates. Measured with featx's default model on ten X-rays
#: of the Covid-19 set: a JPEG re-encode at quality 60 scored at least 0.998,
#: a copy at half size at least 0.973, a 10% brightness change at least 0.957.
#: The maximum for a pair of distinct files in the whole set was 0.940.
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.95


@dataclasses.dataclass
class DuplicateReport:
    """Duplicate files of a cache.

    Attributes
    ----------
    exact_groups : list of list of int
        Row indices of files with identical bytes (same SHA-256), each group
        of two or more, sorted.
    near_pairs : list of (int, int, float)
        Rows of two files with different bytes whose embeddings have cosine
        similarity above the threshold, and that similarity.
    threshold : float
    """

    exact_groups: list[list[int]]
    near_pairs: list[tuple[int, int, float]]
    threshold: float

    def groups(self, n_samples: int) -> np.ndarray:
        """Return a group id per row that joins exact and near duplicates (for group k-fold)."""
        parent = list(range(n_samples))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        pairs = [(g[0], other) for g in self.exact_groups for other in g[1:]]
        pairs += [(a, b) for a, b, _ in self.near_pairs]
        for a, b in pairs:
            parent[find(a)] = find(b)
        return np.array([find(i) for i in range(n_samples)])


def find_duplicates(
    cache: FeatureCache, threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    block_size: int = 2048,
) -> DuplicateReport:
    """Find exact duplicates by SHA-256 and near-duplicates by embedding cosine similarity.

    The similarity search compares every pair, ``block_size`` rows at a time,
    so memory stays at block_size x n_samples floats. Its time grows with the
    square of the number of images.
    """
    by_hash: dict[str, list[int]] = {}
    for row, sha in enumerate(cache.sha256):
        by_hash.setdefault(sha, []).append(row)
    exact_groups = sorted(rows for rows in by_hash.values() if len(rows) > 1)

    norms = np.linalg.norm(cache.embeddings, axis=1, keepdims=True)
    unit = cache.embeddings / np.where(norms > 0, norms, 1.0)
    near_pairs = []
    for start in range(0, len(unit), block_size):
        similarity = unit[start:start + block_size] @ unit.T
        rows, columns = np.nonzero(similarity > threshold)
        for row, column in zip(rows + start, columns):
            if row < column and cache.sha256[row] != cache.sha256[column]:
                near_pairs.append((int(row), int(column), float(similarity[row - start, column])))
    return DuplicateReport(exact_groups, near_pairs, threshold)


def cross_split_pairs(cache: FeatureCache, report: DuplicateReport) -> list[dict]:
    """List duplicates that cross from test or val into train.

    Returns one dict per pair: ``held_out`` (the test or val path),
    ``train`` (the train path), ``kind`` ("exact" or "near") and ``similarity``.
    """
    pairs = []
    candidates = [(a, b, "exact", 1.0) for group in report.exact_groups
                  for i, a in enumerate(group) for b in group[i + 1:]]
    candidates += [(a, b, "near", s) for a, b, s in report.near_pairs]
    for a, b, kind, similarity in candidates:
        for held_out, train in ((a, b), (b, a)):
            if cache.splits[held_out] in ("test", "val") and cache.splits[train] == "train":
                pairs.append({
                    "held_out": str(cache.paths[held_out]), "held_out_split": str(cache.splits[held_out]),
                    "train": str(cache.paths[train]), "kind": kind, "similarity": round(similarity, 4),
                })
    return pairs


def leaked_rows(cache: FeatureCache, report: DuplicateReport, split: str = "test") -> np.ndarray:
    """Return a boolean mask of ``split`` rows that duplicate (exactly or nearly) a train row."""
    leaked_paths = {pair["held_out"] for pair in cross_split_pairs(cache, report)
                    if pair["held_out_split"] == split}
    return np.array([str(p) in leaked_paths for p in cache.paths], dtype=bool)


#: Columns of the metadata-only feature matrix.
METADATA_FEATURES = ("width", "height", "aspect_ratio", "channels", "bit_depth", "log_file_size")


def metadata_matrix(cache: FeatureCache) -> tuple[np.ndarray, list[str]]:
    """Return X of shape (n_samples, n_features) from what is not the picture's content.

    Width, height, aspect ratio, channels, bit depth, log file size and a
    one-hot file format; the names of the columns come second.
    """
    formats = sorted(set(cache.formats.tolist()))
    columns = [
        cache.width.astype(float),
        cache.height.astype(float),
        cache.width / np.maximum(cache.height, 1),
        cache.channels.astype(float),
        cache.bit_depth.astype(float),
        np.log1p(cache.file_size.astype(float)),
    ]
    columns += [(cache.formats == name).astype(float) for name in formats]
    return np.column_stack(columns), list(METADATA_FEATURES) + [f"format={name}" for name in formats]


def metadata_baseline(cache: FeatureCache, groups: np.ndarray, n_folds: int = 5,
                      random_state: int = 0) -> dict | None:
    """Cross-validate a random forest trained on file metadata alone.

    Uses the same group-aware stratified folds as the heads. Returns
    ``accuracy_mean``, ``accuracy_std``, ``folds`` and the forest's
    ``feature_importances`` by feature name, or None when a class has fewer
    than two images.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedGroupKFold, cross_validate

    from featx.evaluation import usable_folds

    X, names = metadata_matrix(cache)
    folds = usable_folds(cache.labels, groups, n_folds)
    if folds < 2:
        return None
    forest = RandomForestClassifier(n_estimators=200, random_state=random_state)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
    scores = cross_validate(forest, X, cache.labels, groups=groups, cv=splitter, scoring="accuracy")
    forest.fit(X, cache.labels)
    accuracy = scores["test_score"]
    importances = dict(sorted(zip(names, forest.feature_importances_.round(3).tolist()),
                              key=lambda item: -item[1]))
    return {
        "folds": folds,
        "accuracy_mean": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std()),
        "feature_importances": importances,
    }


#: The metadata baseline "comes close" to the embedding head when it is
#: within this many accuracy points of it.
SHORTCUT_MARGIN = 0.10


def run_audit(
    cache: FeatureCache, threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    n_folds: int = 5, random_state: int = 0, duplicates: DuplicateReport | None = None,
) -> dict:
    """Run every check and return the content of ``audit.json``.

    Keys: ``n_images``, ``near_duplicate_threshold``, ``exact_duplicate_groups``
    (lists of paths), ``near_duplicate_pairs``, ``cross_split_duplicates``
    (``[held-out path, train path, kind]``), ``metadata_baseline``
    (``accuracy_mean``, ``accuracy_std``, ...), ``embedding_head`` (the mlp
    head's cross-validated accuracy on the same folds), ``majority_rate`` and
    ``shortcut_warning`` (bool).
    """
    from featx.evaluation import cross_validate_head
    from featx.heads import HEADS, feature_matrix

    if duplicates is None:
        duplicates = find_duplicates(cache, threshold)
    groups = duplicates.groups(len(cache))
    paths = [str(p) for p in cache.paths]
    metadata = metadata_baseline(cache, groups, n_folds, random_state)
    head = HEADS["mlp"]
    head_cv = cross_validate_head(head, feature_matrix(cache, head.features), cache.labels,
                                  groups, cache.label_names, n_folds, random_state)
    shortcut = bool(metadata and head_cv and
                    metadata["accuracy_mean"] >= head_cv["accuracy_mean"] - SHORTCUT_MARGIN)
    cross = cross_split_pairs(cache, duplicates)
    return {
        "n_images": len(cache),
        "near_duplicate_threshold": duplicates.threshold,
        "exact_duplicate_groups": [[paths[i] for i in group] for group in duplicates.exact_groups],
        "near_duplicate_pairs": [[paths[a], paths[b], round(s, 4)] for a, b, s in duplicates.near_pairs],
        "cross_split_duplicates": [[p["held_out"], p["train"], p["kind"]] for p in cross],
        "metadata_baseline": metadata,
        "embedding_head": None if head_cv is None else {
            "head": head.name, "accuracy_mean": head_cv["accuracy_mean"],
            "accuracy_std": head_cv["accuracy_std"],
        },
        "majority_rate": float(np.bincount(cache.labels).max() / len(cache)),
        "shortcut_warning": shortcut,
    }


def format_audit_summary(audit: dict) -> str:
    """Render the findings of :func:`run_audit` as a few lines for people."""
    lines = []
    groups = audit["exact_duplicate_groups"]
    lines.append(
        f"Exact duplicates: {len(groups)} groups, {sum(len(g) for g in groups)} files "
        f"of {audit['n_images']}"
    )
    for group in groups:
        lines.append("  " + "  =  ".join(group))
    near = audit["near_duplicate_pairs"]
    lines.append(f"Near duplicates (cosine similarity > {audit['near_duplicate_threshold']}): {len(near)} pairs")
    for a, b, similarity in near[:20]:
        lines.append(f"  {a}  ~  {b}  ({similarity:.3f})")
    if len(near) > 20:
        lines.append(f"  ... and {len(near) - 20} more in audit.json")
    cross = audit["cross_split_duplicates"]
    n_held_out = len({held_out for held_out, _, _ in cross})
    lines.append(
        f"Held-out images that duplicate a training image: {n_held_out} "
        f"({len(cross)} held-out/train pairs)"
    )
    for held_out, train, kind in cross:
        lines.append(f"  {held_out}  ->  {train}  ({kind})")
    metadata, head = audit["metadata_baseline"], audit["embedding_head"]
    if metadata and head:
        lines.append(
            f"Metadata-only baseline (size, channels, bit depth, format, file size): "
            f"CV accuracy {metadata['accuracy_mean']:.3f} +/- {metadata['accuracy_std']:.3f}; "
            f"mlp on embeddings {head['accuracy_mean']:.3f} +/- {head['accuracy_std']:.3f}; "
            f"majority class {audit['majority_rate']:.3f}"
        )
        top = ", ".join(f"{name} {value:.2f}" for name, value in list(metadata["feature_importances"].items())[:3])
        lines.append(f"  most used metadata: {top}")
        if audit["shortcut_warning"]:
            lines.append(
                "WARNING: file metadata alone predicts the labels almost as well as the "
                "image content. The labels may be predictable from the image source "
                "(scanner, hospital, export settings), and the head may have learnt that "
                "instead of the disease."
            )
    return "\n".join(lines)
