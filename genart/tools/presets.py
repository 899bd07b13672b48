"""`python -m genart.presets save|list`: freeze a finished run as a preset; list the presets.

A saved preset holds the run's whole composed config, not just its overrides, so later changes to
the defaults cannot change its image. Its defaults list first selects the run's group options (the
same group files), keys the run deleted are set to null, and interpolations stay as written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import textwrap
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

import genart
from genart.errors import UserError
from genart.moved_keys import SAVED_HEADER
from genart.pretrained import find_pretrained_nodes, upgrade_weights_key
from genart.safety import PRESET_GROUP, check_presets, conf_dir, searchpath_dir

EXCLUDED = ("resume", "hydra", "security")  # per machine or per run, never part of the image
RESTORED = ("threads",)  # null = decided at run time; the run recorded the value it used
RESOLVED = ("fp32", "bf16", "fp16")  # what `precision: auto` (or auto_cpu_fp32) became in a run
# Sub-folders allowed (doorways/left); no dots, so no `..`, no hidden files, no `.yaml` doubled.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_][A-Za-z0-9_-]*)*$")


def user_preset_dirs() -> list[Path]:
    """Dirs named by GENART_PRESETS_DIR (os.pathsep-separated); each holds preset/NAME.yaml."""
    raw = os.environ.get("GENART_PRESETS_DIR", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def default_save_dir() -> Path:
    """The first GENART_PRESETS_DIR's preset/ when set (your presets stay outside the install),
    else conf/preset."""
    users = user_preset_dirs()
    return users[0] / PRESET_GROUP if users else conf_dir() / PRESET_GROUP


def describe(path: Path) -> str:
    """The first `# description:` line, else the first comment after `# @package _global_`."""
    comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    for c in comments:
        if c.lower().startswith("description:"):
            return c.partition(":")[2].strip()
    return next((c for c in comments if c and not c.startswith("@package")), "")


def list_presets(extra: Sequence[Path] = ()) -> list[tuple[Path, str, str]]:
    """(folder, name, description) of every preset in conf/preset, the user dirs and `extra`."""
    dirs = [conf_dir() / PRESET_GROUP, *(d / PRESET_GROUP for d in user_preset_dirs()), *extra]
    files = [(d, p) for d in dict.fromkeys(dirs) for p in sorted(d.rglob("*.yaml"))]
    return [(d, p.relative_to(d).with_suffix("").as_posix(), describe(p)) for d, p in files]


def save_preset(
    run_dir: Path,
    name: str,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    description: str | None = None,
) -> Path:
    """Write `out_dir/NAME.yaml` (default: `default_save_dir()`) that reproduces `run_dir`."""
    name, root = _safe_name(name), Path(out_dir or default_save_dir())
    out = _target_path(root, name)
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"{out} already exists. Pick another --name, or pass --force to replace.")
    run_cfg, hydra_cfg = _load_run(run_dir)
    _check_finished(run_dir, force)
    values = {k: v for k, v in OmegaConf.to_container(run_cfg).items() if k not in EXCLUDED}
    upgrade_weights_key(values)  # a run from before `pretrained:` saves as today's preset
    choices = _group_choices(hydra_cfg)
    try:
        defaults = _defaults_list(hydra_cfg, choices)
        stale = _null_stale_keys(hydra_cfg, defaults, values)
    except Exception as e:  # hydra raises several types; all mean the same to the user here
        raise UserError(
            f"Cannot save {run_dir}: its configs no longer compose ({str(e).strip() or e!r}). "
            f"A preset selects the run's config-group options ({_summary(run_dir, choices)}), so "
            f"each must still exist in the run's config dir and search path."
        ) from None
    info = _run_info(run_dir)
    for key in RESTORED:  # left to the machine (null), but it decides the pixels: freeze it
        count = info.get(key)  # a thread count: a positive int, anything else is not frozen
        if key in values and values[key] is None and type(count) is int and count > 0:
            values[key] = count
    freeze_precision(values, info.get("precision"))
    text = description or _summary(run_dir, choices)
    notes = [*_provenance(run_dir, info, values, stale), f"description: {text}"]
    _carry_start_latent(Path(run_dir), root, out, values)
    _write_atomic(root, out, _render(notes, defaults, values))
    _warn_if_refused(root, name)
    return out


def _carry_start_latent(run_dir: Path, root: Path, out: Path, values: dict) -> None:
    """The run's start_latent.safetensors → `<name>.start_latent.safetensors` beside the preset,
    named in it relative to the preset file (genart.safety resolves it so)."""
    latent = run_dir / "start_latent.safetensors"
    if not latent.is_file():
        return
    beside = out.with_name(f"{out.stem}.start_latent.safetensors")
    _write_atomic(root, beside, latent.read_bytes())
    values.setdefault("init", {})["start_latent"] = beside.name


def freeze_precision(values: dict, resolved: object) -> None:
    """`auto` depends on the machine (bf16 where it is native): the preset keeps what the run used.

    A saved preset that says `precision: auto` runs as auto_cpu_fp32 (moved_keys), so a run that
    recorded no precision keeps the key as it was."""
    if str(values.get("precision", "")).startswith("auto") and resolved in RESOLVED:
        values["precision"] = resolved


def _check_finished(run_dir: Path, force: bool) -> None:
    """A preset promises the run's image: refuse a run that failed or never finished."""
    result, final = Path(run_dir) / "result.json", Path(run_dir) / "final.png"
    status = _read_json(result).get("status") if result.is_file() else None
    if force or (status == "ok" and final.is_file()):
        return
    why = (
        "it has no result.json (it was killed, or is still running)"
        if not result.is_file()
        else f"its result.json says status {status!r}, not 'ok'"
        if status != "ok"
        else "it has no final.png"
    )
    raise UserError(
        f"Refusing to save {run_dir}: {why}, so the preset would not reproduce a finished image. "
        f"Pick a run whose result.json says status 'ok' (see the sweep summary or "
        f"`python -m genart.gallery`), or pass --force to save its config anyway."
    )


def _target_path(root: Path, name: str) -> Path:
    """root/NAME.yaml, refused if a symlink on the way (a sub-folder, the file) leads outside root.

    The root itself may be a link (GENART_PRESETS_DIR on another disk); what is inside may not
    send the write elsewhere."""
    real_root, path = root.resolve(), root
    for part in [*name.split("/")[:-1], f"{name.split('/')[-1]}.yaml"]:
        path = path / part
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            raise UserError(
                f"Refusing to save to {root / name}.yaml: {path} is a symlink to "
                f"{path.resolve()}, outside the preset dir {root}. Remove the link, or pick "
                f"another --name or --dir."
            )
    return root / f"{name}.yaml"


def _write_atomic(root: Path, out: Path, text: str | bytes) -> None:
    """Write a temporary file beside `out`, then rename it over `out`: a reader never sees half a
    preset, and a symlink at `out` is replaced, never followed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.parent.resolve().is_relative_to(root.resolve()):  # a link swapped in meanwhile
        _target_path(root, out.relative_to(root).with_suffix("").as_posix())
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe_name(name: str) -> str:
    name = name.removesuffix(".yaml")
    if not SAFE_NAME.match(name):
        raise UserError(
            f"Unsafe preset name {name!r}: use letters, digits, _ and -, and / for "
            f"sub-folders (doorways/left); no dots, no leading / or -, no empty parts."
        )
    return name


def _load_run(run_dir: Path) -> tuple[Any, Any]:
    hydra_dir = Path(run_dir) / ".hydra"
    if not all((hydra_dir / f).is_file() for f in ("config.yaml", "hydra.yaml")):
        raise UserError(
            f"{run_dir} is not a genart run: {hydra_dir}/config.yaml or hydra.yaml is missing. "
            f"Pass a run's output directory (e.g. outputs/2024-05-01/12-00-00, or one job of a "
            f"sweep, outputs/multirun/<date>/<time>/0); Hydra writes .hydra/ there at start."
        )
    return OmegaConf.load(hydra_dir / "config.yaml"), OmegaConf.load(hydra_dir / "hydra.yaml").hydra


def _group_choices(hydra_cfg: Any) -> list[tuple[str, Any]]:
    """The run's config-group options, without Hydra's own groups and presets."""
    choices = OmegaConf.to_container(OmegaConf.select(hydra_cfg, "runtime.choices") or {})
    keep = lambda k: k.partition("@")[0].split("/")[0] not in ("hydra", PRESET_GROUP)
    return [(k, v) for k, v in choices.items() if keep(k)]


def _opt(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, list) else value


def _compose(hydra_cfg: Any, overrides: list[str], extra_dir: str | None = None) -> Any:
    """Compose the run's primary config (as it is now) with `overrides`, Hydra config included."""
    from hydra import compose, initialize_config_dir

    sources = OmegaConf.select(hydra_cfg, "runtime.config_sources") or []
    main = next(s for s in sources if s.provider == "main")
    path = main.path if main.schema == "file" else searchpath_dir(f"pkg://{main.path}")
    searchpath = [*_run_searchpath(hydra_cfg), *([extra_dir] if extra_dir else [])]
    overrides = overrides + [f"hydra.searchpath=[{','.join(map(repr, searchpath))}]"]
    with initialize_config_dir(str(path), version_base="1.3"):
        return compose(hydra_cfg.job.config_name, overrides, return_hydra_config=True)


def _run_searchpath(hydra_cfg: Any) -> list[str]:
    try:
        return [str(p) for p in OmegaConf.select(hydra_cfg, "searchpath") or []]
    except Exception:  # an interpolation that only resolved inside the run
        return []


def _defaults_list(hydra_cfg: Any, choices: list[tuple[str, Any]]) -> list[dict]:
    """`override /g: x` for groups the main defaults list has; `/g: x` for groups the run added."""
    known = set(_compose(hydra_cfg, []).hydra.runtime.choices)
    added: list[str] = []
    for key, _ in choices:  # runtime.choices lists a group before the groups nested in it
        if key not in known:
            added.append(key)
            picked = [(k, v) for k, v in choices if k in known or k in added]
            args = [f"{'+' if k in added else ''}{k}={_opt(v)}" for k, v in picked]
            known |= set(_compose(hydra_cfg, args).hydra.runtime.choices)  # + its nested groups
    adds = [{f"/{k}": v} for k, v in choices if k in added]
    return adds + [{f"override /{k}": v} for k, v in choices if k not in added]


def _null_stale_keys(hydra_cfg: Any, defaults: list[str], values: dict) -> list[str]:
    """Compose the preset: keys the run had deleted come back from the defaults; null them."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / PRESET_GROUP).mkdir()
        (Path(tmp) / PRESET_GROUP / "_genart_probe.yaml").write_text(_render([], defaults, values))
        cfg = _compose(hydra_cfg, ["+preset=_genart_probe"], Path(tmp).as_uri())
    return _null_extra(OmegaConf.to_container(cfg), values)


def _null_extra(composed: dict, values: dict, prefix: str = "") -> list[str]:
    stale = []
    for k, v in composed.items():
        if prefix or k not in EXCLUDED:
            if k not in values:
                values[k] = None
                stale.append(f"{prefix}{k}")
            elif isinstance(v, dict) and isinstance(values[k], dict):
                stale += _null_extra(v, values[k], f"{prefix}{k}.")
    return stale


def _provenance(run_dir: Path, info: dict, values: dict, stale: list[str]) -> list[str]:
    from genart.runtime import git_commit

    commit = info.get("git_commit") or git_commit()  # the run's own record, else the checkout's
    notes = [
        f"{SAVED_HEADER}: the full config of one run, frozen.",
        f"source run: {Path(run_dir).resolve()}",
        f"saved: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"genart: {info.get('genart', genart.__version__)}, git commit: {commit}",
    ]
    notes += [
        f"pretrained: {key}.path = {_source(node)}" for key, node in find_pretrained_nodes(values)
    ]
    run = [f"{k}={info[k]}" for k in ("device", "precision", "threads", "torch") if k in info]
    notes += [f"ran with: {', '.join(run)}"] if run else []
    return notes + ([f"deleted in the run, so null here: {', '.join(stale)}"] if stale else [])


def _run_info(run_dir: Path) -> dict:
    """What the run recorded about its machine (result.json, run_info.json), if anything."""
    files = [Path(run_dir) / f for f in ("result.json", "run_info.json")]
    return {k: v for f in files if f.is_file() for k, v in _read_json(f).items()}


def _read_json(path: Path) -> dict:
    """A JSON object from `path`; {} when it is unreadable or not an object (a torn write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _one_line(text: object) -> str:
    """`text` safe inside a `# ` comment: every line break YAML knows (\n \r \x85 \u2028
    \u2029) and every other control or format character becomes a space."""
    chars = (" " if unicodedata.category(c)[0] in "CZ" else c for c in str(text))
    return " ".join("".join(chars).split())


def _source(node: dict) -> str:
    """A pretrained node's file: its path, else where it is downloaded from."""
    return str(
        node.get("path") or node.get("url") or f"{node.get('hf_repo')}/{node.get('filename')}"
    )


def _summary(run_dir: Path, choices: list[tuple[str, Any]]) -> str:
    picked = ", ".join(f"{k}={_opt(v)}" for k, v in choices if "/" not in k)
    return f"frozen from run {Path(run_dir).name}" + (f" ({picked})" if picked else "")


def _render(notes: list[str], defaults: list[dict], values: dict) -> str:
    """Comments made one-line; the defaults list and values dumped as YAML, never pasted."""
    lines = ["# @package _global_", *(f"# {_one_line(n)}" for n in notes), "defaults:", ""]
    entries = yaml.safe_dump([*defaults, "_self_"], sort_keys=False, width=float("inf"))
    entries = textwrap.indent(entries, "  ")  # every line alike: still one block sequence
    return "\n".join(lines) + entries + OmegaConf.to_yaml(OmegaConf.create(values))


def _warn_if_refused(root: Path, name: str) -> None:
    """Others will run genart.safety on this file; say now if it would be refused."""
    try:
        if root.resolve().name == PRESET_GROUP:
            check_presets([f"+preset={name}"], [root.resolve().parent, conf_dir()])
    except UserError as e:
        print(f"warning: others will need to allow this preset: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m genart.presets`; user errors print one paragraph and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m genart.presets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="freeze a finished run as a preset")
    save.add_argument("run_dir", type=Path, help="the run's output dir (holds .hydra/)")
    save.add_argument("--name", required=True, help="letters digits _ -, / for sub-folders")
    save.add_argument(
        "--dir", type=Path, help="default: $GENART_PRESETS_DIR/preset if set, else conf/preset"
    )
    save.add_argument("--force", action="store_true", help="replace an existing preset")
    save.add_argument("--description", help="one line shown by `list`")
    show = commands.add_parser("list", help="list presets with their descriptions")
    show.add_argument("--dir", type=Path, action="append", default=[], help="another folder")
    try:
        args = parser.parse_args(argv)
        if args.command == "save":
            out = save_preset(
                args.run_dir, args.name, args.dir, force=args.force, description=args.description
            )
            root = args.dir or default_save_dir()
            print(f"saved {out}\n{_usage(root, _safe_name(args.name))}")
        else:
            _print_list(args.dir)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _usage(root: Path, name: str) -> str:
    root = root.resolve()
    if root.name != PRESET_GROUP:
        return f"to use it, move it to DIR/preset/{name}.yaml and set GENART_PRESETS_DIR=DIR"
    env = "" if root.parent == conf_dir() else f"GENART_PRESETS_DIR={root.parent} "
    return f"run it with: {env}python -m genart +preset={name}"


def _print_list(extra: list[Path]) -> None:
    for d in extra:
        if not d.is_dir():
            raise UserError(f"--dir {d} is not a directory.")
    rows = list_presets(extra)
    width = max((len(name) for _, name, _ in rows), default=0)
    for folder in dict.fromkeys(d for d, _, _ in rows):
        print(f"{folder}:")
        for name, text in ((n, t) for d, n, t in rows if d == folder):
            print(f"  {name.ljust(width)}  — {text or '(no description)'}")
    if not rows:
        print("no presets found (conf/preset, GENART_PRESETS_DIR/preset, --dir)")


if __name__ == "__main__":
    sys.exit(main())
