"""Refuses shared presets that could run code: a `hydra` node, or a `_target_` off the allow-list.

Runs before Hydra composes, reading YAML and Python source only (no torch, no hydra). A
`_target_` is traced through the imports in the source, as Hydra's `_locate` would walk it, so an
allowed prefix is no tunnel: `torch.optim.optimizer.torch.load` is `torch.load`, and is refused.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from genart.errors import UserError

# Not all of `torch.`: torch.load unpickles, torch.hub.load fetches and runs code.
DEFAULT_ALLOW = ("genart.", "torch.optim.", "kornia.augmentation.", "kornia.filters.")
DENY = ("genart.presets.", "genart.safety.", "genart.cli.")  # tools that write files, not parts
PRESET_GROUP = "preset"
OVERRIDE = re.compile(r"^(\+\+|\+|~)?([\w./-]+?)(@[\w.-]*)?=(.*)$")  # prefix, key, @package, value
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# Resolvers a shared preset may not use, and why.
_BUILDS = "can build config nodes (and so a hidden `_target_`) from text"
_REFUSED_RESOLVERS = {
    "oc.decode": _BUILDS,
    "oc.create": _BUILDS,
    "oc.env": "reads an environment variable (a token or password would be copied into the "
    "run's config, its W&B run and any preset saved from it)",
}
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def check_presets(
    overrides: list[str], search_dirs: list[Path], *, main_config: Path | None = None
) -> None:
    """Scan every preset the overrides select, and every file their defaults lists pull in.

    `overrides` may be the whole command line: flags are skipped, and the dirs of `--config-dir`,
    `hydra.searchpath=[...]` and the main config's `hydra.searchpath` join `search_dirs`.
    """
    allow = allowed_prefixes(main_config)
    dirs = [*search_dirs, *_extra_dirs(overrides, main_config)]
    todo = [
        (g, p)
        for g, opt in _preset_choices(overrides, dirs)
        for p in _locate_required(g, opt, dirs)
    ]
    seen: set[Path] = set()
    while todo:
        group, path = todo.pop()
        if path.resolve() not in seen:
            seen.add(path.resolve())
            todo += _scan_file(path, group, dirs, allow)


def allowed_prefixes(main_config: Path | None = None) -> tuple[str, ...]:
    """Built-in prefixes + GENART_ALLOW_TARGETS + `security.allow_targets` of the main config."""
    extra = os.environ.get("GENART_ALLOW_TARGETS", "").split(",")
    listed = (read_main_config(main_config).get("security") or {}).get("allow_targets") or []
    extra += listed.split(",") if isinstance(listed, str) else [str(p) for p in listed]
    return DEFAULT_ALLOW + tuple(p.strip() for p in extra if p.strip())


def conf_dir() -> Path:
    """The installed `conf` package: the app's primary config dir (found, not imported)."""
    return Path(next(iter(importlib.util.find_spec("conf").submodule_search_locations)))


def read_main_config(main_config: Path | None = None) -> dict:
    """The main config file (conf/config.yaml) as plain YAML: no preset can reach into it."""
    path = main_config or conf_dir() / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def available_presets(search_dirs: list[Path]) -> list[str]:
    """Every `preset/**.yaml` under the search dirs, as `+preset=` names."""
    found = [
        p.relative_to(d / PRESET_GROUP)
        for d in search_dirs
        for p in (d / PRESET_GROUP).rglob("*.yaml")
    ]
    return sorted({p.with_suffix("").as_posix() for p in found})


def _tokens(value: str) -> list[str]:
    """The names in an override value: `a`, `a,b`, `[a,b]`, `choice(a,b)`, `glob(a*,exclude=b)`."""
    value = re.sub(r"\w+\s*=\s*", " ", value)  # keyword arguments: keep their values (over-scan)
    value = re.sub(r"\b\w+\(", " ", value)  # choice( glob( sort( shuffle(
    return [t for t in re.split(r"[\s,()\[\]'\"]+", value) if t and t != "null"]


def searchpath_dir(entry: str) -> Path | None:
    """The directory of a Hydra search path entry: `file:///abs/dir`, `pkg://module`, or a path."""
    scheme, sep, rest = entry.partition("://")
    if scheme == "pkg" and sep:
        try:
            spec = importlib.util.find_spec(os.path.normpath(rest).replace("/", "."))
        except (ImportError, ValueError):  # Hydra will report the bad entry itself
            return None
        return Path(next(iter(spec.submodule_search_locations or [None]))) if spec else None
    return Path(rest if sep else entry).expanduser().resolve()


def _extra_dirs(argv: list[str], main_config: Path | None) -> list[Path]:
    entries = (read_main_config(main_config).get("hydra") or {}).get("searchpath") or []
    for flag, value in zip(argv, [*argv[1:], ""], strict=False):  # value: the next arg
        m = OVERRIDE.match(flag)
        if flag in ("-cd", "--config-dir") or (m and m[2] == "--config-dir"):
            entries.append(value if flag in ("-cd", "--config-dir") else m[4])
        elif m and m[2] == "hydra.searchpath":
            entries += _tokens(m[4])
    return [d for e in map(str, entries) if "${" not in e and (d := searchpath_dir(e))]


def _preset_choices(overrides: list[str], dirs: list[Path]) -> list[tuple[str, str]]:
    found = []
    for o in overrides:
        m = OVERRIDE.match(o.strip())
        group = m[2].strip("/") if m else ""
        if not m or m[1] == "~" or group.split("/")[0] != PRESET_GROUP:
            continue
        for name in _tokens(m[4]):
            if "$" in name:
                raise UserError(f"Cannot check the presets of `{o}`: name them directly.")
            if m[4].lstrip().startswith("glob("):
                options = {p.stem for d in dirs for p in (d / group).glob("*.yaml")}
                found += [(group, n) for n in options if fnmatch.fnmatch(n, name)]
            else:
                found.append((group, name))
    return found


def _locate(group: str, option: str, dirs: list[Path]) -> list[Path]:
    """Every match, not only the one Hydra would pick: checking all is the safe side."""
    return [d / group / f"{option}.yaml" for d in dirs if (d / group / f"{option}.yaml").is_file()]


def _locate_required(group: str, option: str, dirs: list[Path]) -> list[Path]:
    if paths := _locate(group, option, dirs):
        return paths
    name = f"{group}/{option}".removeprefix(PRESET_GROUP + "/")
    raise UserError(
        f"Preset '{name}' not found: no {name}.yaml in "
        f"{', '.join(str(d / PRESET_GROUP) for d in dirs)}. Available presets: "
        f"{', '.join(available_presets(dirs)) or 'none'}. To add a directory of presets, set "
        f"GENART_PRESETS_DIR=DIR (it must hold DIR/preset/{name}.yaml) or pass "
        f"hydra.searchpath=[file:///abs/DIR]."
    )


def _scan_file(path: Path, group: str, dirs: list[Path], allow: tuple[str, ...]) -> list:
    """Check one config file; return the (group, file) pairs its defaults list pulls in."""
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        why = " ".join(str(e).split())
        raise UserError(f"Refusing preset file {path}: it is not plain YAML ({why}).") from None
    header = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    if header and "hydra" in re.split(r"[./]", header[1]):
        raise _hydra_error(path, f"its `# @package {header[1]}` header")
    defaults = data.pop("defaults", []) if isinstance(data, dict) else []
    if not isinstance(defaults, list):
        raise UserError(f"Refusing preset file {path}: `defaults` must be a list.")
    _walk(data, "", path, allow)
    return [pair for entry in defaults for pair in _follow(entry, group, path, dirs)]


def _walk(node: Any, key: str, path: Path, allow: tuple[str, ...]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if "hydra" in str(k).split("."):  # any depth: the file's package may nest it anywhere
                raise _hydra_error(path, f"`{sub}`")
            if k == "_target_":
                _check_target(v, sub, path, allow)
            else:
                _walk(v, sub, path, allow)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]", path, allow)
    elif isinstance(node, str) and (word := next((w for w in _REFUSED_RESOLVERS if w in node), "")):
        raise UserError(
            f"Refusing preset file {path}: `{key}` contains `{word}`, which "
            f"{_REFUSED_RESOLVERS[word]}. Write the values out plainly, or move this setting into "
            f"your own config if you trust it."
        )


def _follow(entry: Any, group: str, path: Path, dirs: list[Path]) -> list[tuple[str, Path]]:
    """Files a defaults-list entry of a config in `group` selects (relative or /absolute)."""
    if entry == "_self_":
        return []
    if isinstance(entry, dict) and len(entry) == 1:
        ((target, value),) = entry.items()
        target = str(target).split()[-1]  # drop `override` / `optional`
        options = value if isinstance(value, list) else [value]
    elif isinstance(entry, str):
        target, options = entry, []
    else:
        raise UserError(f"Refusing preset file {path}: unreadable defaults entry {entry!r}.")
    sub, _, package = target.partition("@")
    full = sub[1:] if sub.startswith("/") else f"{group}/{sub}"
    if "hydra" in re.split(r"[./]", f"{full}.{package}"):
        raise _hydra_error(path, f"its defaults entry {entry!r}")
    if "${" in str(options):
        raise UserError(f"Refusing preset file {path}: defaults entry {entry!r} is interpolated.")
    if isinstance(entry, str):  # a config path, not `group: option`
        parent, _, name = full.rpartition("/")
        return [(parent, p) for p in _locate(parent, name, dirs)]
    return [(full, p) for o in options if o not in (None, "???") for p in _locate(full, o, dirs)]


def _hydra_error(path: Path, what: str) -> UserError:
    return UserError(
        f"Refusing preset file {path}: {what} reaches Hydra's own `hydra` config (a key named "
        f"hydra counts at any depth). Hydra builds callbacks, launchers and sweepers from it and "
        f"applies hydra.job.env_set before genart can check anything, so a preset may not touch "
        f"it. If you trust this preset, move those settings to your own command line or config."
    )


def _check_target(value: Any, key: str, path: Path, allow: tuple[str, ...]) -> None:
    if why := _target_problem(value, allow):
        raise UserError(
            f"Refusing preset file {path}: `{key}` names `{value}`, {why} ({', '.join(allow)}). "
            f"A `_target_` is imported and called when the run builds its objects, so a shared "
            f"preset could run any code (torch.load unpickles, torch.hub.load fetches code). If "
            f"you trust this preset and its author, allow the name with GENART_ALLOW_TARGETS="
            f"{value} (comma-separated prefixes) or under security.allow_targets in config.yaml."
        )


def _target_problem(value: Any, allow: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not _DOTTED.match(value) or re.search(r"(^|\.)_", value):
        return "which is not a plain dotted name of a public object"
    if _allowed(value, DENY) and value not in allow:
        return "a genart command-line tool (it writes files), denied whatever the allowed prefixes"
    if not _allowed(value, allow):
        return "which is outside the allowed target prefixes"
    try:
        outside = "`, `".join(
            sorted(c for c in _Tracer(allow).canonical(value) if not _ok(c, allow))
        )
    except _Untraceable as e:  # an exact name the user allowed is trusted as it stands
        return None if value in allow else f"which could not be traced to a definition ({e})"
    return f"which leads to `{outside}`, outside the allowed prefixes" if outside else None


def _allowed(name: str, allow: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in allow)


def _ok(name: str, allow: tuple[str, ...]) -> bool:
    return _allowed(name, allow) and (not _allowed(name, DENY) or name in allow)


class _Untraceable(Exception):
    """The definition of a dotted name cannot be found in Python source."""


class _Mod(NamedTuple):
    name: str
    file: Path | None  # source file; None for namespace packages and compiled modules
    dirs: tuple[Path, ...]  # package directories; empty for a plain module


class _Tracer:
    """Follows a dotted name through the source, as Hydra's `_locate` would import and getattr."""

    def __init__(self, allow: tuple[str, ...]):
        self.allow, self.steps = allow, 0

    def canonical(self, name: str) -> set[str]:
        """Every place `name` may really live (outside names are returned as they stand)."""
        if not _ok(name, self.allow):
            return {name}
        top, *rest = name.split(".")
        return self.resolve(_module(top), rest)

    def resolve(self, mod: _Mod, rest: list[str]) -> set[str]:
        self.steps += 1
        if not rest:
            return {mod.name}
        if self.steps > 200:
            raise _Untraceable("the chain of imports is too long")
        head, tail = rest[0], rest[1:]
        binds, stars = _bindings(mod.file, mod.name, bool(mod.dirs)) if mod.file else ({}, ())
        if head in binds:  # getattr first, as `_locate` does; every candidate binding must pass
            return set().union(*(self.follow(mod, head, b, tail) for b in binds[head]))
        if sub := _submodule(mod, head):
            return self.resolve(sub, tail)
        if found := [r for s in stars for r in self.traced(".".join([s, *rest]))]:
            return set().union(*found)  # `from m import *` brings only names that m defines
        raise _Untraceable(f"`{head}` is not defined in the source of {mod.name}")

    def traced(self, name: str) -> list[set[str]]:
        try:
            return [self.canonical(name)]
        except _Untraceable:
            return []

    def follow(self, mod: _Mod, head: str, bind: tuple[str, Any], tail: list[str]) -> set[str]:
        kind, what = bind
        if kind in ("module", "from") and not _ok(what, self.allow):
            return {".".join([what, *tail])}
        if kind == "module":  # `import a.b` binds the module a.b, found by module name
            return self.resolve(_module(what), tail)
        base, _, attr = what.rpartition(".") if kind == "from" else ("", "", "")
        if kind == "from" and base != mod.name:
            return self.resolve(_module(base), [attr, *tail])
        if kind == "from" and (sub := _submodule(mod, attr)):  # `from . import sub`
            return self.resolve(sub, tail)
        if kind == "value" and _DOTTED.match(chain := ast.unparse(what)):  # an alias: x = a.b
            return self.resolve(mod, chain.split(".") + tail)
        qual = f"{mod.name}.{head}"
        if not tail and kind != "from":
            return {qual}
        members = {n.name for n in getattr(what, "body", []) if isinstance(n, _DEFS)}
        if kind == "class" and len(tail) == 1 and tail[0] in members:
            return {f"{qual}.{tail[0]}"}
        raise _Untraceable(f"`{'.'.join([qual, *tail])}` is not a definition in the source")


def _module(name: str) -> _Mod:
    """A module found by name on disk, without importing it."""
    top, *subs = name.split(".")
    if (spec := importlib.util.find_spec(top)) is None:  # a top-level name: found, not imported
        raise _Untraceable(f"module `{top}` is not installed")
    file = Path(spec.origin) if spec.has_location and spec.origin.endswith(".py") else None
    mod = _Mod(top, file, tuple(Path(d) for d in spec.submodule_search_locations or ()))
    for part in subs:
        if not (mod := _submodule(mod, part)):
            raise _Untraceable(f"no source file for module `{name}`")
    return mod


def _submodule(mod: _Mod, part: str) -> _Mod | None:
    name = f"{mod.name}.{part}"
    for d in mod.dirs:  # in the order of Python's path finder
        if (d / part / "__init__.py").is_file():
            return _Mod(name, d / part / "__init__.py", (d / part,))
        if any(d.glob(f"{part}.*so")) or any(d.glob(f"{part}.*pyd")):
            return _Mod(name, None, ())
        if (d / f"{part}.py").is_file():
            return _Mod(name, d / f"{part}.py", ())
        if (d / part).is_dir():
            return _Mod(name, None, (d / part,))
    return None


@functools.cache
def _bindings(file: Path, modname: str, is_pkg: bool) -> tuple[dict[str, list], tuple[str, ...]]:
    """Module-level names of a source file, each with every statement that may bind it."""
    binds: dict[str, list] = {}
    stars: list[str] = []
    add = lambda name, kind, what: binds.setdefault(name, []).append((kind, what))
    package = (modname if is_pkg else modname.rpartition(".")[0]).split(".")
    try:
        tree = ast.parse(file.read_bytes())
    except (OSError, SyntaxError, ValueError) as e:
        raise _Untraceable(f"the source of {modname} cannot be read") from e
    for node in _statements(tree.body):
        if isinstance(node, _DEFS):
            add(node.name, "class" if isinstance(node, ast.ClassDef) else "def", node)
        elif isinstance(node, ast.Import):
            for a in node.names:  # `import a.b` binds a; `import a.b as c` binds c to a.b
                target = a.name if a.asname else a.name.partition(".")[0]
                add(a.asname or target, "module", target)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*base, *([node.module] if node.module else [])])
            stars += [base for a in node.names if a.name == "*"]
            for a in (a for a in node.names if a.name != "*"):
                add(a.asname or a.name, "from", f"{base}.{a.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for t in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(t, ast.Name):
                    add(t.id, "value", node.value)
    return binds, tuple(stars)


def _statements(body: list[ast.stmt]):
    """Top-level statements, looking inside `if` and `try` (every branch may run)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _statements(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                yield from _statements(handler.body)
        else:
            yield node
