"""A secret volume laid out and updated the way kubelet does it (atomic writer).

``DIR/..2026_12_05_20_00_00.000000001/client-secret`` holds the data, ``DIR/..data`` links
to that timestamped directory, and ``DIR/client-secret`` links through ``..data``. An update
writes a new timestamped directory, points a temporary link at it, renames the link over
``..data`` (one atomic step), then removes the old directory: the file the application
opened by name is never written to, its inode changes.
"""

from __future__ import annotations

import itertools
import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: The key of the secret, hence the file's name in the volume.
KEY = "client-secret"
_versions = itertools.count(1)


class SecretVolume:
    """A directory holding one secret key, updated by a ``..data`` link swap."""

    def __init__(self, directory: Path, value: str) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = self._write(value)
        (self.directory / "..data").symlink_to(self._current.name)
        (self.directory / KEY).symlink_to(f"..data/{KEY}")

    @property
    def path(self) -> Path:
        """The file the application is given (``client_secret_file=``)."""
        return self.directory / KEY

    def _write(self, value: str) -> Path:
        version = self.directory / f"..2026_12_05_20_00_00.{next(_versions):09d}"
        version.mkdir()
        (version / KEY).write_text(value + "\n")
        return version

    def update(self, value: str) -> None:
        """Swap in a new value as kubelet does."""
        old, self._current = self._current, self._write(value)
        link = self.directory / "..data_tmp"
        link.symlink_to(self._current.name)
        os.replace(link, self.directory / "..data")  # noqa: PTH105 (the atomic rename itself)
        shutil.rmtree(old)
