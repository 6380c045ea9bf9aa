"""Reading caches back, and the errors for files that are not caches."""

import h5py
import numpy as np
import pytest

import featx
from featx.errors import FeatxError
from tests.test_pipeline import run_extract


def test_missing_cache_error(tmp_path):
    with pytest.raises(FeatxError, match=r"Cache not found: .*nothing\.h5\. Check the path, or write the cache first with `python -m featx.extract"):
        featx.load_cache(tmp_path / "nothing.h5")


def test_not_hdf5_error(tmp_path):
    path = tmp_path / "c.h5"
    path.write_bytes(b"plain text, not HDF5")
    with pytest.raises(FeatxError, match=r"Cannot read cache: .*c\.h5\. Expected an HDF5 file written by featx"):
        featx.load_cache(path)


def test_other_hdf5_error(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as file:
        file["x"] = np.arange(3)
    with pytest.raises(FeatxError, match="Not a featx cache"):
        featx.load_cache(path)


def test_truncated_cache_error(dataset, tmp_path):
    path = tmp_path / "c.h5"
    run_extract(dataset, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(FeatxError, match="Cannot read cache|Damaged cache"):
        featx.load_cache(path)


def test_newer_format_version_error(dataset, tmp_path):
    path = tmp_path / "c.h5"
    run_extract(dataset, path)
    with h5py.File(path, "a") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(FeatxError, match="Unsupported cache format version.*Expected 1, got 99.*--rebuild"):
        featx.load_cache(path)


def test_split_selects_rows(dataset, tmp_path):
    run_extract(dataset, tmp_path / "c.h5")
    cache = featx.load_cache(tmp_path / "c.h5")
    test = cache.split("test")
    assert len(test) == 9
    assert set(test.splits) == {"test"}
    assert test.label_names == cache.label_names
    assert test.embeddings.shape == (9, 96)
    assert list(test.y[:3]) == ["cats", "cats", "cats"]
    with pytest.raises(FeatxError, match="Split not in cache: 'val'"):
        cache.split("val")
