"""Classification heads: scikit-learn estimators fitted on cached features.

Each head names the cached features it reads (``"embeddings"`` or ``"raw"``)
and builds a fresh, seeded scikit-learn estimator, so the same cache always
gives the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from featx.cache import FeatureCache
from featx.errors import FeatxError


@dataclasses.dataclass(frozen=True)
class Head:
    """A named recipe for a classifier.

    Attributes
    ----------
    name : str
        Value of ``--head``.
    features : {"embeddings", "raw"}
        Which cached array the head reads.
    description : str
    build : callable
        ``build(random_state)`` returns an unfitted scikit-learn estimator.
    """

    name: str
    features: str
    description: str
    build: Callable[[int], object]


def _mlp(random_state: int):
    from sklearn.neural_network import MLPClassifier

    # The embeddings are fed as they are, without standardisation: they are
    # non-negative averages of ReLU6 activations on one common scale, and
    # standardising them gives barely active features as much weight as
    # strong ones. On the Covid-19 X-ray set that lowered 5-fold CV accuracy
    # by 2 to 4 points across seeds.
    return MLPClassifier(hidden_layer_sizes=(30,), max_iter=1000, random_state=random_state)


def _raw_mlp(random_state: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Pixels are standardised inside the pipeline, so within cross-validation
    # the scaling is learnt from the training folds only, and the fitted head
    # takes the cached uint8 thumbnails (0-255) as they are.
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(30,), max_iter=1000, random_state=random_state),
    )


def _scaled(estimator):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Inside the pipeline, so cross-validation learns the scaling from the
    # training folds only.
    return make_pipeline(StandardScaler(), estimator)


def _logreg(random_state: int):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(max_iter=5000, random_state=random_state))


def _svm(random_state: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Calibration gives predict_proba for predict's CSV output; scikit-learn
    # 1.9 deprecates SVC(probability=True) in favour of this form.
    return _scaled(CalibratedClassifierCV(SVC(kernel="rbf", random_state=random_state),
                                          ensemble=False, cv=3))


def _knn(random_state: int):
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(n_neighbors=5))


HEADS: dict[str, Head] = {
    head.name: head
    for head in (
        Head("mlp", "embeddings", "MLP, one hidden layer of 30 units, on the model embeddings", _mlp),
        Head("raw", "raw", "the same MLP on standardised 32x32 grayscale pixels (baseline)", _raw_mlp),
        Head("logreg", "embeddings", "logistic regression on standardised embeddings", _logreg),
        Head("svm", "embeddings", "RBF support vector machine on standardised embeddings", _svm),
        Head("knn", "embeddings", "5 nearest neighbours on standardised embeddings", _knn),
    )
}


def get_head(name: str) -> Head:
    """Return the head called ``name``, or raise FeatxError listing the heads."""
    try:
        return HEADS[name]
    except KeyError:
        raise FeatxError(
            "Unknown head", f"--head {name}", expected=f"one of {', '.join(HEADS)} or all"
        ) from None


def feature_matrix(cache: FeatureCache, features: str) -> np.ndarray:
    """Return X of shape (n_samples, n_features), float32, for a head's feature kind.

    Raw pixels keep their 0-255 range, so a saved head accepts ``cache.raw``
    and freshly decoded thumbnails without any rescaling.
    """
    if features == "embeddings":
        return np.asarray(cache.embeddings, dtype=np.float32)
    if features == "raw":
        return cache.raw.astype(np.float32)
    raise ValueError(f"unknown feature kind {features!r}")
