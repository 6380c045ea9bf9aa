"""Find the labelled images of a data folder.

Two layouts are recognised. When the first level contains split folders
(``train``, ``val`` or ``validation``, ``test``, in any letter case) the layout
is ``DATA_DIR/<split>/<class>/<file>``; otherwise it is ``DATA_DIR/<class>/<file>``
and every image gets the split ``"none"``. Files may sit in subfolders of a
class folder. Hidden files and folders (name starting with ``.``) are ignored,
and so are files whose extension is not an image extension.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import unicodedata
from pathlib import Path

from featx._text import count
from featx.config import IMAGE_EXTENSIONS, NO_SPLIT, SPLIT_FOLDERS
from featx.errors import FeatxError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One image found in the data folder.

    Attributes
    ----------
    path : Path
        Path to open, as found (symbolic links not resolved).
    relative_path : str
        Path relative to the data folder with ``/`` separators; the key of the
        image in the cache.
    label : str
        Class name, the class folder's name in Unicode NFC form.
    split : str
        ``"train"``, ``"val"``, ``"test"`` or ``"none"``.
    """

    path: Path
    relative_path: str
    label: str
    split: str


@dataclasses.dataclass
class ImageCollection:
    """The images of a data folder, in a fixed order.

    Attributes
    ----------
    data_dir : Path
        The folder, made absolute.
    images : list of ImageFile
        Sorted by split, class and relative path.
    class_names : list of str
        Sorted class names; label indices refer to this order.
    ignored : list of str
        Relative paths of files skipped because their extension is not an
        image extension.
    """

    data_dir: Path
    images: list[ImageFile]
    class_names: list[str]
    ignored: list[str]

    @property
    def splits(self) -> list[str]:
        return sorted({image.split for image in self.images})


def find_images(data_dir: str | os.PathLike) -> ImageCollection:
    """List the labelled images under ``data_dir``.

    Raises
    ------
    FeatxError
        When the folder does not exist, is a file, mixes split and class
        folders, has an empty class folder, or contains no image at all.
    """
    data_dir = Path(os.path.abspath(data_dir))
    if not data_dir.exists():
        raise FeatxError(
            "Data folder not found",
            str(data_dir),
            hint="Pass the folder that contains the class (or split) folders.",
        )
    if not data_dir.is_dir():
        raise FeatxError(
            "Not a folder",
            str(data_dir),
            expected="a folder laid out as <class>/<file> or <split>/<class>/<file>",
            got="a file",
        )

    top_folders = _visible_subfolders(data_dir)
    split_folders = [f for f in top_folders if f.name.lower() in SPLIT_FOLDERS]
    if split_folders:
        others = [f.name for f in top_folders if f not in split_folders]
        if others:
            raise FeatxError(
                "Mixed layout",
                str(data_dir),
                expected="only split folders (train, val, validation, test) "
                "or only class folders at the first level",
                got=f"split folders beside {others}",
                hint="Move the class folders into a split folder.",
            )
        _reject_duplicate_splits(split_folders)
        class_roots = [
            (SPLIT_FOLDERS[f.name.lower()], c)
            for f in split_folders
            for c in _visible_subfolders(f)
        ]
    else:
        _reject_nested_splits(data_dir, top_folders)
        class_roots = [(NO_SPLIT, c) for c in top_folders]

    images: list[ImageFile] = []
    ignored: list[str] = []
    for split, class_dir in class_roots:
        label = unicodedata.normalize("NFC", class_dir.name)
        found, class_ignored = _walk_class_folder(data_dir, class_dir, label, split)
        ignored.extend(class_ignored)
        if not found:
            raise FeatxError(
                "Empty class folder",
                str(class_dir),
                expected=f"at least one image ({', '.join(sorted(IMAGE_EXTENSIONS))})",
                got="no file with an image extension" + (
                    f" ({len(class_ignored)} with other extensions)" if class_ignored else ""),
                hint="Add images or remove the folder.",
            )
        images.extend(found)

    if not images:
        loose = [f for f in data_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise FeatxError(
                "No class folders",
                str(data_dir),
                expected="class folders with image files, as <class>/<file> "
                "or <split>/<class>/<file>",
                got=f"{len(loose)} image files directly in the folder",
                hint="The folder name is not read as a label: if this is one class folder, "
                "pass the folder above it, which holds one folder per class.",
            )
        raise FeatxError(
            "No images found",
            str(data_dir),
            expected="class folders with image files, as <class>/<file> "
            "or <split>/<class>/<file>",
            got="no class folder",
        )

    images.sort(key=lambda image: (image.split, image.label, image.relative_path))
    class_names = sorted({image.label for image in images})
    if len(class_names) == 1:
        logger.warning(
            "Only one class (%s) under %s. Fit needs at least two class folders.",
            class_names[0], data_dir,
        )
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        logger.info("Ignored %s that are not images by extension: %s", count(len(ignored), "file"), shown)
    return ImageCollection(data_dir, images, class_names, ignored)


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.is_dir()
    )


def _reject_nested_splits(data_dir: Path, top_folders: list[Path]) -> None:
    """Reject a data folder given one level too high, with the split folders one level down."""
    for folder in top_folders:
        splits = [f.name for f in _visible_subfolders(folder) if f.name.lower() in SPLIT_FOLDERS]
        if splits:
            raise FeatxError(
                "Data folder one level too high",
                str(data_dir),
                expected="class or split folders at the first level",
                got=f"split folders ({', '.join(splits)}) inside {folder.name}",
                hint=f"Pass {folder} as the data folder.",
            )


def _reject_duplicate_splits(split_folders: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for folder in split_folders:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in seen:
            raise FeatxError(
                "Two folders for one split",
                f"{seen[split]} and {folder}",
                hint=f"Merge them into one {split} folder.",
            )
        seen[split] = folder


def _walk_class_folder(
    data_dir: Path, class_dir: Path, label: str, split: str
) -> tuple[list[ImageFile], list[str]]:
    """Walk one class folder, following symbolic links but never a folder twice."""
    found: list[ImageFile] = []
    ignored: list[str] = []
    visited: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in visited:
            # A symbolic link led back to a folder already walked (a loop or
            # a second link to it): walking it again would list images twice.
            logger.warning("Not following %s: that folder was already walked", root)
            dirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            relative_path = path.relative_to(data_dir).as_posix()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(relative_path)
                continue
            found.append(ImageFile(path, relative_path, label, split))
    return found, ignored
