"""Free-space checks before bytes land on a local file system."""

from __future__ import annotations

import shutil
from pathlib import Path

from imageport.errors import NoSpace


def check_space(where: Path, needed: int | None) -> None:
    """Fail with NoSpace when ``needed`` bytes (if known) do not fit where they would land."""
    free = shutil.disk_usage(where).free
    if needed is not None and needed > free:
        raise NoSpace(
            f"staging has {free} bytes free but the source is {needed} bytes: "
            f"free space in {where} or move staging_dir"
        )
