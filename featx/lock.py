"""An exclusive, crash-safe lock on a cache file, naming its owner when taken."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import filelock

from featx.errors import FeatxError


class CacheLock:
    """Hold ``<cache>.lock`` for the life of one writer.

    The lock is an operating-system file lock (``flock`` on POSIX), so it is
    released when its process ends, even by SIGKILL: a crashed run never
    leaves it stuck. The owner's process id, host and start time are written to
    ``<cache>.owner``, so a second writer can name the process to wait for.
    """

    def __init__(self, cache_path: Path) -> None:
        self.cache_path = cache_path
        self.lock_path = cache_path.with_name(cache_path.name + ".lock")
        self.owner_path = cache_path.with_name(cache_path.name + ".owner")
        self._lock = filelock.FileLock(str(self.lock_path), timeout=0)

    def acquire(self) -> None:
        """Take the lock at once or raise FeatxError naming the process that holds it."""
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise FeatxError(
                "Cache is in use by another featx process",
                str(self.cache_path),
                hint=f"{self._describe_owner()} Wait for it to finish, or pass "
                "another --cache path.",
            ) from None
        except PermissionError as error:
            raise FeatxError(
                "Cannot write to the cache folder",
                str(self.cache_path.parent),
                hint=f"({error.strerror}) Pass a --cache path in a writable folder.",
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        try:
            self.owner_path.write_text(json.dumps(owner), encoding="utf-8")
        except OSError:
            pass  # The owner note only improves the message of a second writer.

    def release(self) -> None:
        try:
            self.owner_path.unlink()
        except OSError:
            pass
        self._lock.release()

    def _describe_owner(self) -> str:
        try:
            owner = json.loads(self.owner_path.read_text(encoding="utf-8"))
            return (
                f"It is held by process {owner['pid']} on {owner['host']}, "
                f"started {owner['started']}."
            )
        except (OSError, ValueError, KeyError):
            return "The process that holds it did not record its id."

    def __enter__(self) -> "CacheLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
