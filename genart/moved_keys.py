"""Config keys that moved: a user's old words still run, with one line on stderr naming the new key.

Two forms the old words come in, each with its table:
- a command-line override's key (`logger.mode=online`), rewritten before Hydra reads it: `MOVED`
  (fixed keys), and `genart.pretrained.moved_override` (`<model>.weights` -> `<model>.pretrained`);
- a saved preset's or an old run's `.hydra/config.yaml` nodes, upgraded once the config is composed
  (or loaded to resume): `FLAT_GROUPS`, groups that became a dict of named `_target_`s, whose old
  single node (`logger: {_target_: …WandbCallback, mode: …}`) moves under its entry's name; and
  `genart.pretrained.upgrade_weights_key` (a model node's `weights:` -> `pretrained:`), and
  `genart.safety.MOVED_TARGETS` (a class that moved module; a preset naming one is refused by the
  safety check, an old run's own config resumes with the new name).
A value whose meaning changed: `precision: auto` (bf16 on CPUs with native bf16) in a saved preset
or run that recorded no resolved precision, made with fp32 on CPU, becomes `auto_cpu_fp32`
(`upgrade_precision`), so it keeps its pixels.
No hydra and no torch at import: the command line is rewritten before anything heavy loads.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from genart.errors import UserError
from genart.overrides import key_of

# old dotted key (or key prefix) -> new one
MOVED = {
    "logger.mode": "logger.wandb.mode",
    "logger.project": "logger.wandb.project",
    "logger.entity": "logger.wandb.entity",
    "logger.log_images": "logger.wandb.log_images",
}

# group -> {the _target_ of its old single node: that node's name in the group's dict}
FLAT_GROUPS = {
    "logger": {"genart.callbacks.wandb.WandbCallback": "wandb"},
}

LEGACY_AUTO = "auto_cpu_fp32"  # bf16 on CUDA GPUs with bf16, fp32 on every CPU
SAVED_HEADER = "Saved by `python -m genart.presets save`"  # a saved preset's first note

_OVERRIDE = re.compile(r"^(\+\+|\+|~)?([\w.]+)(@[\w.]*)?(=.*)?$", re.S)  # prefix, key, @pkg, =value


def new_key(key: str) -> str | None:
    """The key `key` is now called, or None when it did not move."""
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def moved_override(arg: str) -> str | None:
    """`arg` with its moved key renamed, or None when its key did not move."""
    from genart.pretrained import moved_override as moved_weights

    match = _OVERRIDE.match(arg)
    moved = new_key(match[2]) if match else None
    if moved is None:
        return moved_weights(arg)
    prefix, _, package, value = match.groups()
    return f"{prefix or ''}{moved}{package or ''}{value or ''}"


def rewrite_overrides(argv: list[str]) -> list[str]:
    """argv with every moved key renamed, each rename said in one line on stderr."""
    out = []
    for arg in argv:
        moved = moved_override(arg)
        out.append(arg if moved is None else moved)
        if moved is not None:
            old_key, new = key_of(arg), key_of(moved)
            print(f"genart: {old_key} is now {new}; running with {moved}", file=sys.stderr)
    return out


def upgrade_config(cfg: DictConfig, overrides: list[str] = ()) -> DictConfig:
    """Move `weights:` to `pretrained:`, and each group's old single node under its entry's name
    (`logger` -> `logger.wandb`).

    Hydra merges a saved preset's old node into the group's new dict, so the old node shows as a
    `_target_` beside the dict's entries (its values win, except those the command line set in
    `overrides`); an old run's config holds the old node alone.
    """
    from genart.pretrained import upgrade_weights_key

    for old in upgrade_weights_key(cfg, overrides):
        print(f"genart: {old} is now {old.rpartition('.')[0]}.pretrained", file=sys.stderr)
    for key, old, new in rename_moved_targets(cfg):
        print(f"genart: {key} {old} is now {new}; running with it", file=sys.stderr)
    typed = {key_of(o) for o in overrides}
    for group, names in FLAT_GROUPS.items():
        node = cfg.get(group)
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        items = OmegaConf.to_container(node, resolve=False)
        name = names.get(items["_target_"])
        if name is None:
            raise UserError(
                f"{group} is a single node (_target_: {items['_target_']}), but {group} is now a "
                f"dict of named entries: put it under {group}.<name> ({group}.<name>._target_=…)."
            )
        keep = {
            k.removeprefix(f"{group}.{name}.") for k in typed if k.startswith(f"{group}.{name}.")
        }
        print(
            f"genart: the single {group} node (_target_: {items['_target_']}) is now "
            f"{group}.{name}; running with it there",
            file=sys.stderr,
        )
        with open_dict(cfg):
            cfg[group] = nest_flat_node(items, name, keep)
    return cfg


def upgrade_precision(cfg: DictConfig, source: str) -> None:
    """`precision: auto` → `auto_cpu_fp32` in `source` (a saved preset or run that recorded no
    resolved precision), whose pixels were made with fp32 on CPU."""
    if cfg.get("precision") != "auto":
        return
    cfg.precision = LEGACY_AUTO
    print(
        f"genart: {source} was saved when precision=auto meant fp32 on CPU; running it with "
        f"precision={LEGACY_AUTO} so it keeps its pixels (precision=auto for bf16 where it is native)",
        file=sys.stderr,
    )


def saved_with_auto_precision(path: Path) -> bool:
    """`path` is a preset `presets save` wrote that says `precision: auto`: save writes the
    precision auto resolved to, so only a preset saved without a frozen precision says auto."""
    import yaml

    try:
        text = path.read_text()
        comments = [line for line in text.splitlines() if line.startswith("#")]
        values = yaml.safe_load(text) if any(SAVED_HEADER in c for c in comments[:2]) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(values, dict) and values.get("precision") == "auto"


def nest_flat_node(items: dict, name: str, keep: set[str] = frozenset()) -> dict:
    """{entries…, name: that entry with the old node's keys}; the old node's values win over the
    entry's, except for the keys in `keep`."""
    entries = {k: v for k, v in items.items() if isinstance(v, dict) and "_target_" in v}
    flat = {k: v for k, v in items.items() if k not in entries}
    entry = entries.get(name, {})
    return {**entries, name: {**entry, **{k: v for k, v in flat.items() if k not in keep}}}


def rename_moved_targets(node, prefix: str = "") -> list[tuple[str, str, str]]:
    """Each `_target_` that `genart.safety.MOVED_TARGETS` retired, renamed in place (no
    interpolation resolved); (key, old, new) for each."""
    from genart.safety import MOVED_TARGETS

    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    renamed = []
    for key in keys:
        child, dotted = node._get_node(key), f"{prefix}.{key}" if prefix else str(key)
        if key == "_target_" and child._value() in MOVED_TARGETS:
            old = child._value()
            with open_dict(node):
                node[key] = MOVED_TARGETS[old]
            renamed.append((dotted, old, MOVED_TARGETS[old]))
        elif isinstance(child, DictConfig | ListConfig) and child._value() is not None:
            renamed += rename_moved_targets(child, dotted)
    return renamed
