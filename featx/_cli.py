"""Helpers shared by the command-line modules: logging set-up and error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from featx.errors import FeatxError


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="Also log debugging details.")
    group.add_argument("-q", "--quiet", action="store_true", help="Log only warnings and errors.")


def configure_logging(args: argparse.Namespace) -> None:
    """Send featx's log lines to stderr, one line per phase, without prefixes."""
    level = logging.INFO
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("featx")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # TensorFlow's C++ start-up chatter hides featx's own lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _StderrHandler(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is at the time of each record.

    Tests and notebooks replace ``sys.stderr``; a handler bound to the object
    present at set-up would then write to a closed stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def make_output_folder(folder: Path, flag: str) -> None:
    """Create an output folder before any long work, or raise FeatxError naming ``flag``."""
    if folder.exists() and not folder.is_dir():
        raise FeatxError("Output path is a file", f"{flag} {folder}",
                         expected="a folder, existing or new")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FeatxError("Cannot create output folder", f"{flag} {folder}",
                         hint=f"({error.strerror}) Pass a folder you can write to.") from None


def run(main: Callable[[], int]) -> int:
    """Run a command's body; print FeatxError messages without a traceback."""
    try:
        return main()
    except FeatxError as error:
        logging.getLogger("featx").error("%s", error)
        return error.exit_status
    except KeyboardInterrupt:
        logging.getLogger("featx").error("Interrupted")
        return 130
