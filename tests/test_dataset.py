import os

import numpy as np
import pytest

from featx.dataset import find_images
from featx.errors import FeatxError
from tests.conftest import textured_image, write_image


def _img(path):
    write_image(path, textured_image((100, 100, 100), hash(str(path)) % 1000))


def test_split_layout_case_insensitive(tmp_path):
    for name in ["TRAIN/b/1.png", "Validation/b/2.JPG", "test/a/3.Jpeg", "TRAIN/a/4.tif"]:
        _img(tmp_path / name)
    collection = find_images(tmp_path)
    assert collection.class_names == ["a", "b"]
    assert sorted({i.split for i in collection.images}) == ["test", "train", "val"]
    assert {i.relative_path for i in collection.images} == {
        "TRAIN/b/1.png", "Validation/b/2.JPG", "test/a/3.Jpeg", "TRAIN/a/4.tif"}


def test_two_folders_for_one_split_error(tmp_path):
    _img(tmp_path / "val" / "a" / "1.png")
    _img(tmp_path / "validation" / "a" / "2.png")
    with pytest.raises(FeatxError, match="Two folders for one split"):
        find_images(tmp_path)


def test_class_layout_without_split(tmp_path):
    _img(tmp_path / "zebra" / "1.png")
    _img(tmp_path / "apple" / "sub" / "2.png")
    collection = find_images(tmp_path)
    assert collection.class_names == ["apple", "zebra"]
    assert [i.split for i in collection.images] == ["none", "none"]
    assert [i.label for i in collection.images] == ["apple", "zebra"]


def test_hidden_and_other_files_ignored(tmp_path):
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    _img(tmp_path / ".git" / "x.png")
    collection = find_images(tmp_path)
    assert [i.relative_path for i in collection.images] == ["a/1.png"]
    assert sorted(collection.ignored) == ["a/Thumbs.db", "a/notes.txt"]


def test_non_ascii_and_spaces(tmp_path):
    _img(tmp_path / "Neumonía" / "radiografía 1.png")
    collection = find_images(tmp_path)
    assert collection.class_names == ["Neumonía"]
    assert collection.images[0].relative_path == "Neumonía/radiografía 1.png"


def test_missing_folder_error(tmp_path):
    with pytest.raises(FeatxError, match="Data folder not found: .*nowhere"):
        find_images(tmp_path / "nowhere")


def test_file_instead_of_folder_error(tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FeatxError, match="Not a folder: .*file.png"):
        find_images(tmp_path / "file.png")


def test_empty_class_folder_error(tmp_path):
    _img(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(FeatxError, match=r"Empty class folder: .*[/\\]b\."):
        find_images(tmp_path)


def test_no_images_error(tmp_path):
    with pytest.raises(FeatxError, match="No images found"):
        find_images(tmp_path)


def test_mixed_layout_error(tmp_path):
    _img(tmp_path / "train" / "a" / "1.png")
    _img(tmp_path / "b" / "1.png")
    with pytest.raises(FeatxError, match="Mixed layout"):
        find_images(tmp_path)


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_symlink_loop_does_not_hang(tmp_path):
    _img(tmp_path / "a" / "1.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    _img(outside / "2.png")
    os.symlink(outside, tmp_path / "a" / "linked")
    collection = find_images(tmp_path)
    assert [i.relative_path for i in collection.images] == ["a/1.png", "a/linked/2.png"]


def test_folder_one_level_too_high_error(tmp_path):
    for name in ["xrays/train/a/1.png", "xrays/train/b/2.png", "xrays/test/a/3.png"]:
        _img(tmp_path / name)
    with pytest.raises(FeatxError, match=r"Data folder one level too high: .*\. Expected class or split "
                       r"folders at the first level, got split folders \(test, train\) inside xrays\. "
                       r"Pass .*xrays as the data folder\."):
        find_images(tmp_path)
    assert find_images(tmp_path / "xrays").class_names == ["a", "b"]


def test_class_folder_given_as_data_folder_error(tmp_path):
    for name in ["cats/1.png", "cats/2.png"]:
        _img(tmp_path / name)
    with pytest.raises(FeatxError, match=r"No class folders: .*cats\. .*got 2 image files directly in the "
                       r"folder\. .*pass the folder above it"):
        find_images(tmp_path / "cats")


def test_single_class_warns(tmp_path, caplog):
    _img(tmp_path / "cats" / "1.png")
    collection = find_images(tmp_path)
    assert collection.class_names == ["cats"]
    assert "Only one class (cats)" in caplog.text
