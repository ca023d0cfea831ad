"""What the demo and the tests run on, without a model hub: the seeded demo pool (`pool`), the
demo model fetched from the package registry (`model`), tiny random models (`tiny`) and
synthetic pools for benchmarks (`synthetic`). Nothing here is needed to run on your own data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where the demo pool and model are written once: `$RAYSEL_CACHE`, or `~/.cache/raysel`."""
    return Path(os.environ.get("RAYSEL_CACHE") or Path.home() / ".cache" / "raysel")
