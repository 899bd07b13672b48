"""What happens around Hydra: preset safety checks before it composes, a sweep summary after."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAILED_JOBS: list[tuple[str, str]] = []  # (job dir, error line), filled by the sweep callback


def preset_search_dirs() -> list[Path]:
    import conf

    return [Path(conf.__file__).parent, *user_preset_dirs()]


def user_preset_dirs() -> list[Path]:
    """Directories named in GENART_PRESETS_DIR (each holding a preset/ folder)."""
    raw = os.environ.get("GENART_PRESETS_DIR", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p]


def before_hydra(argv: list[str]) -> None:
    """Refuse unsafe presets before Hydra builds anything; add user preset dirs to the search path."""
    try:
        from genart.safety import check_presets
    except ImportError:  # pragma: no cover - safety module not installed yet
        check_presets = None
    if check_presets is not None:
        check_presets(argv, preset_search_dirs())
    extra = user_preset_dirs()
    if extra and not any(a.startswith("hydra.searchpath") for a in argv):
        sys.argv.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in extra) + "]")


def after_hydra() -> None:
    if FAILED_JOBS:
        sys.exit(1)
