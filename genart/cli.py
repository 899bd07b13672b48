"""What happens before Hydra composes: moved keys renamed, preset safety checks, search path."""

from __future__ import annotations

import sys
from pathlib import Path


def preset_search_dirs() -> list[Path]:
    import conf
    from genart.tools.presets import user_preset_dirs

    return [Path(conf.__file__).parent, *user_preset_dirs()]


def before_hydra(argv: list[str]) -> None:
    """Rename moved keys (genart.moved_keys); refuse unsafe presets before Hydra builds anything;
    add user preset dirs to the search path; quote free-text prompts so Hydra reads them as typed
    (genart.overrides)."""
    from genart.moved_keys import rewrite_overrides
    from genart.overrides import as_typed
    from genart.safety import check_presets
    from genart.tools.presets import user_preset_dirs

    argv = rewrite_overrides(argv)
    check_presets(argv, preset_search_dirs())
    sys.argv[1:] = argv = refine_last(as_typed(argv))
    extra = user_preset_dirs()
    if extra and not any(a.startswith("hydra.searchpath") for a in argv):
        sys.argv.insert(1, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in extra) + "]")
    from genart.checks import check_output_dir

    check_output_dir(argv)  # a file where Hydra makes the run dir: one paragraph, no traceback


def refine_last(argv: list[str]) -> list[str]:
    """`+refine=…` composes after every preset, wherever it was typed: refining sets the steps,
    lr and crop sizes of a re-optimisation, which the preset it stacks on must not undo."""
    refine = [a for a in argv if a.startswith("+refine=")]
    rest = [a for a in argv if a not in refine]
    presets = [i for i, a in enumerate(rest) if a.startswith("+preset=")]
    at = presets[-1] + 1 if presets else len(rest)
    return rest[:at] + refine + rest[at:] if presets else argv
