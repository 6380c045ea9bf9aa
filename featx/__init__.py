"""featx: cache frozen TF Hub image embeddings in HDF5 and fit scikit-learn heads on them.

Commands: ``python -m featx.extract``, ``python -m featx.fit``.
In a notebook: ``featx.load_cache(path)`` returns the cached embeddings.
"""

from featx._version import __version__
from featx.cache import FeatureCache, load_cache
from featx.errors import FeatxError

__all__ = ["FeatureCache", "FeatxError", "__version__", "load_cache"]
