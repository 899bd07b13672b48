"""Where presets live, and `python -m genart.presets save|list`: freeze a finished run as a preset.

A saved preset holds the run's whole composed config (not just its overrides), so later changes to
the defaults cannot change its image. Its defaults list selects the run's config-group options
first, so composition starts from the same group files; keys the run had deleted are set to null.
Interpolations are kept as written: `${size}` points at the frozen `size`, while `${hydra:...}` and
`${oc.env:...}` resolve in the new run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import genart
from genart.errors import UserError
from genart.safety import OVERRIDE, PRESET_GROUP, check_presets, override_tokens, read_main_config

EXCLUDED = ("resume", "hydra", "security")  # per machine or per run, never part of the image
# Sub-folders allowed (doorways/left); no dots, so no `..`, no hidden files, no `.yaml` doubled.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_][A-Za-z0-9_-]*)*$")
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name"}
_VALUE_FLAGS |= {"--experimental-rerun", "-i", "--info", "-cd", "--config-dir"}


def user_preset_dirs() -> list[Path]:
    """Search dirs named by GENART_PRESETS_DIR (os.pathsep-separated); each holds preset/NAME.yaml."""
    raw = os.environ.get("GENART_PRESETS_DIR", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def searchpath_entries() -> list[str]:
    """The user preset dirs as `hydra.searchpath` entries (`file:///abs/dir`)."""
    return [d.as_uri() for d in user_preset_dirs()]


def conf_dir() -> Path:
    """The installed `conf` package: the app's primary config dir."""
    import conf

    return Path(conf.__file__).parent


def check_command_line(argv: list[str]) -> None:
    """Run `check_presets` on what `python -m genart ARGV` would load; raises UserError."""
    overrides, dirs, args = [], [], iter(argv)
    for arg in args:
        flag, _, inline = arg.partition("=")
        if flag in _VALUE_FLAGS:  # a flag and its value: skip both, keep a --config-dir
            value = inline or next(args, "")
            if flag in ("-cd", "--config-dir"):
                dirs.append(Path(value).expanduser().resolve())
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    dirs += [conf_dir(), *user_preset_dirs(), *_searchpath_dirs(overrides)]
    check_presets(overrides, dirs)


def _searchpath_dirs(overrides: list[str]) -> list[Path]:
    entries = (read_main_config().get("hydra") or {}).get("searchpath") or []
    for m in filter(None, map(OVERRIDE.match, overrides)):
        entries += override_tokens(m[4]) if m[2] == "hydra.searchpath" else []
    return [d for e in entries if "${" not in str(e) and (d := _uri_dir(str(e)))]


def _uri_dir(entry: str) -> Path | None:
    scheme, sep, rest = entry.partition("://")
    if scheme == "pkg" and sep:
        spec = importlib.util.find_spec(os.path.normpath(rest).replace("/", "."))
        return Path(next(iter(spec.submodule_search_locations))) if spec else None
    return Path(rest if sep else entry).expanduser().resolve()


def preset_dirs(extra: list[Path] = ()) -> list[Path]:
    """Folders holding preset YAML files: conf/preset, each user dir's preset/, then `extra`."""
    found = [conf_dir() / PRESET_GROUP, *(d / PRESET_GROUP for d in user_preset_dirs()), *extra]
    return [d for d in dict.fromkeys(found) if d.is_dir()]


def describe(path: Path) -> str:
    """The first `# description:` line, else the first comment after `# @package _global_`."""
    comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    for c in comments:
        if c.lower().startswith("description:"):
            return c.partition(":")[2].strip()
    return next((c for c in comments if c and not c.startswith("@package")), "")


def list_presets(extra: list[Path] = ()) -> list[tuple[Path, str, str]]:
    """(folder, name, description) of every preset, folder by folder."""
    files = [(d, p) for d in preset_dirs(extra) for p in sorted(d.rglob("*.yaml"))]
    return [(d, p.relative_to(d).with_suffix("").as_posix(), describe(p)) for d, p in files]


def save_preset(
    run_dir: Path,
    name: str,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    description: str | None = None,
) -> Path:
    """Write `out_dir/NAME.yaml` (default conf/preset) that reproduces the run in `run_dir`."""
    name = _safe_name(name)
    out = (out_dir or conf_dir() / PRESET_GROUP) / f"{name}.yaml"
    if out.exists() and not force:
        raise UserError(f"{out} already exists. Pick another --name, or pass --force to replace.")
    run_cfg, hydra_cfg = _load_run(run_dir)
    values = {k: v for k, v in OmegaConf.to_container(run_cfg).items() if k not in EXCLUDED}
    choices = _group_choices(hydra_cfg)
    try:
        defaults = _defaults_list(hydra_cfg, choices)
        stale = _stale_keys(hydra_cfg, _render([], defaults, values), values)
    except Exception as e:  # composing needs the run's config dir; the values still hold
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"warning: could not compose the run's configs ({first}); wrote the "
            f"defaults list from the command line and left stale keys unchecked.",
            file=sys.stderr,
        )
        defaults, stale = _defaults_from_overrides(hydra_cfg, choices), []
    for key in stale:
        _set_null(values, key)
    notes = _provenance(run_dir, values, stale)
    text = " ".join((description or _summary(run_dir, choices)).split())
    notes.append(f"description: {text}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_render(notes, defaults, values))
    _warn_if_refused(out, name)
    return out


def _safe_name(name: str) -> str:
    name = name.removesuffix(".yaml")
    if not SAFE_NAME.match(name):
        raise UserError(
            f"Unsafe preset name {name!r}: use letters, digits, `_` and `-`, with `/` for "
            f"sub-folders (e.g. doorways/left); no dots, no leading `/` or `-`, no empty parts."
        )
    return name


def _load_run(run_dir: Path) -> tuple[Any, Any]:
    hydra_dir = Path(run_dir) / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise UserError(
            f"{run_dir} is not a finished genart run: {hydra_dir / 'config.yaml'} is missing. "
            f"Pass a run's output directory (e.g. outputs/2024-05-01/12-00-00, or one job of a "
            f"sweep, outputs/multirun/<date>/<time>/0); Hydra writes .hydra/ there at start."
        )
    hydra_yaml = hydra_dir / "hydra.yaml"
    hydra_cfg = OmegaConf.load(hydra_yaml).hydra if hydra_yaml.is_file() else OmegaConf.create()
    return OmegaConf.load(hydra_dir / "config.yaml"), hydra_cfg


def _group_choices(hydra_cfg: Any) -> list[tuple[str, Any]]:
    """The run's config-group options, without Hydra's own groups and presets."""
    choices = OmegaConf.to_container(OmegaConf.select(hydra_cfg, "runtime.choices") or {})
    keep = lambda k: k.partition("@")[0].split("/")[0] not in ("hydra", PRESET_GROUP)
    return [(k, v) for k, v in choices.items() if keep(k)]


def _defaults_from_overrides(hydra_cfg: Any, choices: list[tuple[str, Any]]) -> list[str]:
    """Fallback: a group the command line appended (`+g=x`) is added, any other overridden."""
    task = OmegaConf.select(hydra_cfg, "overrides.task") or []
    added = {m[2] + (m[3] or "") for m in map(OVERRIDE.match, task) if m and m[1] == "+"}
    adds = [f"/{k}: {_opt(v)}" for k, v in choices if k in added]
    return adds + [f"override /{k}: {_opt(v)}" for k, v in choices if k not in added]


def _opt(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, list) else value


def _compose(hydra_cfg: Any, overrides: list[str], extra_dir: str | None = None) -> Any:
    """Compose the run's primary config (as it is now) with `overrides`, Hydra config included."""
    from hydra import compose, initialize_config_dir

    sources = OmegaConf.select(hydra_cfg, "runtime.config_sources") or []
    main = next(s for s in sources if s.provider == "main")
    path = main.path if main.schema == "file" else _uri_dir(f"pkg://{main.path}")
    searchpath = [*_run_searchpath(hydra_cfg), *([extra_dir] if extra_dir else [])]
    overrides = overrides + [f"hydra.searchpath=[{','.join(map(repr, searchpath))}]"]
    with initialize_config_dir(str(path), version_base="1.3"):
        return compose(hydra_cfg.job.config_name, overrides, return_hydra_config=True)


def _run_searchpath(hydra_cfg: Any) -> list[str]:
    try:
        return [str(p) for p in OmegaConf.select(hydra_cfg, "searchpath") or []]
    except Exception:  # an interpolation that only resolved inside the run
        return []


def _defaults_list(hydra_cfg: Any, choices: list[tuple[str, Any]]) -> list[str]:
    """`override /g: x` for groups the main defaults list has; `/g: x` for groups the run added."""
    known = set(_compose(hydra_cfg, []).hydra.runtime.choices)
    added: list[str] = []
    for key, _ in choices:  # runtime.choices lists a group before the groups nested in it
        if key not in known:
            added.append(key)
            picked = [(k, v) for k, v in choices if k in known or k in added]
            args = [f"{'+' if k in added else ''}{k}={_opt(v)}" for k, v in picked]
            known |= set(_compose(hydra_cfg, args).hydra.runtime.choices)  # + its nested groups
    adds = [f"/{k}: {_opt(v)}" for k, v in choices if k in added]
    return adds + [f"override /{k}: {_opt(v)}" for k, v in choices if k not in added]


def _stale_keys(hydra_cfg: Any, text: str, values: dict) -> list[str]:
    """Keys the preset would inherit from the defaults although the run had deleted them."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / PRESET_GROUP).mkdir()
        (Path(tmp) / PRESET_GROUP / "_genart_probe.yaml").write_text(text)
        cfg = _compose(hydra_cfg, ["+preset=_genart_probe"], Path(tmp).as_uri())
    composed = OmegaConf.to_container(cfg)
    return [k for k in _extra_keys(composed, values) if k.split(".")[0] not in EXCLUDED]


def _extra_keys(composed: dict, run: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in composed.items():
        if k not in run:
            keys.append(f"{prefix}{k}")
        elif isinstance(v, dict) and isinstance(run[k], dict):
            keys += _extra_keys(v, run[k], f"{prefix}{k}.")
    return keys


def _set_null(values: dict, key: str) -> None:
    *parents, last = key.split(".")
    for p in parents:
        values = values[p]
    values[last] = None


def _provenance(run_dir: Path, values: dict, stale: list[str]) -> list[str]:
    notes = [
        "Saved by `python -m genart.presets save`: the full config of one run, frozen.",
        f"source run: {Path(run_dir).resolve()}",
        f"saved: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"genart: {genart.__version__}, git commit: {_git_commit()}",
    ]
    notes += [f"weights: {key} = {spec}" for key, spec in _weights(values)]
    info = {}
    for file in ("result.json", "run_info.json"):
        if (Path(run_dir) / file).is_file():
            info |= json.loads((Path(run_dir) / file).read_text())
    run = [f"{k}={info[k]}" for k in ("device", "precision", "threads") if k in info]
    notes += [f"ran with: {', '.join(run)}"] if run else []
    return notes + ([f"deleted in the run, so null here: {', '.join(stale)}"] if stale else [])


def _git_commit() -> str:
    repo = Path(genart.__file__).parent.parent
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        return commit + (
            " (with uncommitted changes)" if _git(repo, "status", "--porcelain") else ""
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _git(repo: Path, *args: str) -> str:
    run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
    run.check_returncode()
    return run.stdout.strip()


def _weights(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every `weights:` node: its path, else where it is downloaded from."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else k
            if k == "weights" and isinstance(v, dict):
                where = v.get("path") or v.get("url") or f"{v.get('hf_repo')}/{v.get('filename')}"
                found.append((f"{sub}.path", str(where)))
            else:
                found += _weights(v, sub)
    return found


def _summary(run_dir: Path, choices: list[tuple[str, Any]]) -> str:
    picked = ", ".join(f"{k}={_opt(v)}" for k, v in choices if "/" not in k)
    return f"frozen from run {Path(run_dir).name}" + (f" ({picked})" if picked else "")


def _render(notes: list[str], defaults: list[str], values: dict) -> str:
    lines = ["# @package _global_", *(f"# {n}" for n in notes), "defaults:"]
    lines += [f"  - {d}" for d in defaults] + ["  - _self_", ""]
    return "\n".join(lines) + OmegaConf.to_yaml(OmegaConf.create(values))


def _warn_if_refused(out: Path, name: str) -> None:
    """Others will run genart.safety on this file; say now if it would be refused."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / PRESET_GROUP / f"{name}.yaml"
        copy.parent.mkdir(parents=True)
        copy.write_text(out.read_text())
        try:
            check_presets([f"+preset={name}"], [Path(tmp), conf_dir(), *user_preset_dirs()])
        except UserError as e:
            print(f"warning: others will need to allow this preset: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m genart.presets`; user errors print one paragraph and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m genart.presets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="freeze a finished run as a preset")
    save.add_argument("run_dir", type=Path, help="the run's output dir (holds .hydra/)")
    save.add_argument("--name", required=True, help="preset name, e.g. doorway or doorways/left")
    save.add_argument("--dir", type=Path, help="folder for NAME.yaml (default: conf/preset)")
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
            print(f"saved {out}\nrun it with: python -m genart +preset={_safe_name(args.name)}")
        else:
            _print_list(args.dir)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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
        print("no presets found in " + ", ".join(map(str, preset_dirs(extra))))


if __name__ == "__main__":
    sys.exit(main())
