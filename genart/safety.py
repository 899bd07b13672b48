"""Refuses shared presets that could run code: a `hydra:` node or a `_target_` outside an allow-list.

Runs before Hydra composes anything, so it reads YAML and Python source only (no torch, no hydra).
A `_target_` is traced through re-exports in the source (`torch.optim.optimizer.torch.load` is
`torch.load`), so an allowed prefix cannot be used as a tunnel to the rest of Python.
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

DEFAULT_ALLOW = ("genart.", "torch.optim.", "kornia.augmentation.", "kornia.filters.")
PRESET_GROUP = "preset"
_OVERRIDE = re.compile(r"^(\+\+|\+|~)?([\w./-]+?)(@[\w.-]*)?=(.*)$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# Resolvers that turn text into config nodes: they could assemble a `_target_` we never see.
_NODE_BUILDERS = ("oc.decode", "oc.create", "_target_")


def conf_dir() -> Path:
    """The installed `conf` package directory (the app's primary config dir)."""
    spec = importlib.util.find_spec("conf")
    return Path(next(iter(spec.submodule_search_locations)))


def allowed_prefixes(main_config: Path | None = None) -> tuple[str, ...]:
    """Built-in prefixes + GENART_ALLOW_TARGETS + `security.allow_targets` of the main config file."""
    extra = os.environ.get("GENART_ALLOW_TARGETS", "").split(",")
    listed = (_read_main(main_config).get("security") or {}).get("allow_targets") or []
    extra += listed.split(",") if isinstance(listed, str) else [str(p) for p in listed]
    return DEFAULT_ALLOW + tuple(p.strip() for p in extra if p.strip())


def check_presets(
    overrides: list[str], search_dirs: list[Path], *, main_config: Path | None = None
) -> None:
    """Scan every preset the overrides select (and what their defaults lists pull in)."""
    allow = allowed_prefixes(main_config)
    todo = [
        (g, f)
        for g, opt in _preset_choices(overrides, search_dirs)
        for f in _locate_required(g, opt, search_dirs)
    ]
    seen: set[Path] = set()
    while todo:
        group, path = todo.pop()
        if path.resolve() not in seen:
            seen.add(path.resolve())
            todo += _scan_file(path, group, search_dirs, allow)


def available_presets(search_dirs: list[Path]) -> list[str]:
    """Every `preset/**.yaml` under the search dirs, as `+preset=` names."""
    names = {
        p.relative_to(d / PRESET_GROUP).with_suffix("").as_posix()
        for d in search_dirs
        for p in (d / PRESET_GROUP).rglob("*.yaml")
    }
    return sorted(names)


def _read_main(main_config: Path | None) -> dict:
    path = main_config or conf_dir() / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def _tokens(value: str) -> list[str]:
    value = re.sub(r"\w+\s*=\s*", " ", value)  # keyword arguments: keep their values (over-scan)
    value = re.sub(r"\b\w+\(", " ", value)  # choice( glob( sort( shuffle(
    return [t for t in re.split(r"[\s,()\[\]'\"]+", value) if t and t != "null"]


def _preset_choices(overrides: list[str], dirs: list[Path]) -> list[tuple[str, str]]:
    found = []
    for o in overrides:
        m = _OVERRIDE.match(o.strip())
        group = m[2].strip("/") if m else ""
        if m and m[1] != "~" and (group == PRESET_GROUP or group.startswith(PRESET_GROUP + "/")):
            glob = m[4].lstrip().startswith("glob(")
            for opt in _tokens(m[4]):
                if "$" in opt:
                    raise UserError(f"Cannot check `{o}`: name the preset directly.")
                found += (
                    [(group, n) for n in _options(group, dirs) if fnmatch.fnmatch(n, opt)]
                    if glob
                    else [(group, opt)]
                )
    return found


def _options(group: str, dirs: list[Path]) -> set[str]:
    return {p.stem for d in dirs for p in (d / group).glob("*.yaml")}


def _locate(group: str, option: str, dirs: list[Path]) -> list[Path]:
    return [d / group / f"{option}.yaml" for d in dirs if (d / group / f"{option}.yaml").is_file()]


def _locate_required(group: str, option: str, dirs: list[Path]) -> list[Path]:
    paths = _locate(group, option, dirs)
    if not paths:
        name = f"{group}/{option}".removeprefix(PRESET_GROUP + "/")
        known = ", ".join(available_presets(dirs)) or "none"
        where = ", ".join(str(d / PRESET_GROUP) for d in dirs)
        raise UserError(
            f"Preset '{name}' not found: looked for {name}.yaml in {where}. Available presets: "
            f"{known}. Add a directory with GENART_PRESETS_DIR=DIR (it must hold DIR/preset/"
            f"{name}.yaml) or hydra.searchpath=[file:///abs/DIR]."
        )
    return paths


def _scan_file(path: Path, group: str, dirs: list[Path], allow: tuple[str, ...]) -> list:
    """Check one config file; return the (group, file) pairs its defaults list pulls in."""
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise UserError(f"Refusing preset file {path}: it is not plain YAML ({e}).") from None
    header = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    if header and "hydra" in re.split(r"[./]", header[1]):
        raise _hydra_error(path, f"its `# @package {header[1]}` header", "")
    defaults = data.pop("defaults", []) if isinstance(data, dict) else []
    _walk(data, "", path, allow)
    return [pair for entry in defaults or [] for pair in _follow(entry, group, path, dirs)]


def _walk(node: Any, key: str, path: Path, allow: tuple[str, ...]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if "hydra" in str(k).split("."):
                raise _hydra_error(path, f"`{sub}`", " (a key named hydra counts wherever it is)")
            if k == "_target_":
                _check_target(v, sub, path, allow)
            _walk(v, sub, path, allow)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]", path, allow)
    elif isinstance(node, str) and key.rpartition(".")[2] != "_target_":
        for word in _NODE_BUILDERS:
            if word in node:
                raise UserError(
                    f"Refusing preset file {path}: `{key}` contains `{word}`, which can build "
                    f"config nodes (and so a hidden `_target_`) from text. Write the values out "
                    f"plainly, or move this setting to your own config if you trust it."
                )


def _follow(entry: Any, group: str, path: Path, dirs: list[Path]) -> list[tuple[str, Path]]:
    """Files a defaults-list entry of a config in `group` selects (relative or /absolute)."""
    if entry == "_self_":
        return []
    if isinstance(entry, str):
        target, options = entry, [None]
    elif isinstance(entry, dict) and len(entry) == 1:
        ((target, value),) = entry.items()
        target = str(target).split()[-1]  # drop `override` / `optional`
        options = value if isinstance(value, list) else [value]
    else:
        raise UserError(f"Refusing preset file {path}: unreadable defaults entry {entry!r}.")
    sub, _, package = target.partition("@")
    full = sub[1:] if sub.startswith("/") else f"{group}/{sub}"
    if "hydra" in re.split(r"[./]", f"{full}.{package}"):
        raise _hydra_error(path, f"its defaults entry {entry!r}", "")
    if any("${" in str(o) for o in options):
        raise UserError(f"Refusing preset file {path}: defaults entry {entry!r} is interpolated.")
    if options == [None]:  # a config path, not group: option
        return [(full.rpartition("/")[0], p) for p in _locate(*full.rpartition("/")[::2], dirs)]
    return [(full, p) for o in options if o not in (None, "???") for p in _locate(full, o, dirs)]


def _hydra_error(path: Path, what: str, note: str) -> UserError:
    return UserError(
        f"Refusing preset file {path}: {what} reaches Hydra's own `hydra` config{note}. Hydra "
        f"builds callbacks, launchers and sweepers from it and applies hydra.job.env_set before "
        f"genart can check anything, so a preset may not touch it. If you trust this preset, "
        f"move those settings to your own command line or conf/config.yaml."
    )


def _check_target(value: Any, key: str, path: Path, allow: tuple[str, ...]) -> None:
    why = _target_problem(value, allow)
    if why:
        raise UserError(
            f"Refusing preset file {path}: `{key}` names `{value}`, {why} ({', '.join(allow)}). "
            f"A `_target_` is imported and called when the run builds its objects, so a shared "
            f"preset could run any code through it (torch.load unpickles, torch.hub.load fetches "
            f"code). If you trust this preset and its author, allow the name with "
            f"GENART_ALLOW_TARGETS={value} (comma-separated prefixes) or list it under "
            f"security.allow_targets in conf/config.yaml."
        )


def _target_problem(value: Any, allow: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not _DOTTED.match(value) or re.search(r"(^|\.)__", value):
        return "which is not a plain dotted name"
    if not _allowed(value, allow):
        return "which is outside the allowed target prefixes"
    try:
        outside = sorted(c for c in _canonical(value, allow) if not _allowed(c, allow))
    except _Untraceable as e:  # an exact name the user allowed is trusted as it stands
        return None if value in allow else f"which could not be traced to its definition ({e})"
    return (
        f"which leads to `{'`, `'.join(outside)}`, outside the allowed prefixes"
        if outside
        else None
    )


def _allowed(name: str, allow: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in allow)


class _Untraceable(Exception):
    """The definition of a dotted name cannot be found in Python source."""


class _Mod(NamedTuple):
    name: str
    file: Path | None  # source file; None for namespace packages and compiled modules
    dirs: tuple[Path, ...]  # package directories; empty for a plain module


def _canonical(name: str, allow: tuple[str, ...], depth: int = 0) -> set[str]:
    """Where `name` really lives, following imports and aliases as hydra's _locate would."""
    if not _allowed(name, allow):
        return {name}
    if depth > 40:
        raise _Untraceable("the import chain is too long")
    parts = name.split(".")
    trusted = max(len(p.rstrip(".").split(".")) for p in allow if _allowed(name, (p,)))
    mod, used = _top(parts[0]), 1
    while used < trusted and (sub := _submodule(mod, parts[used])):  # allowed prefixes are modules
        mod, used = sub, used + 1
    return _resolve(mod, parts[used:], allow, depth + 1)


def _resolve(mod: _Mod, rest: list[str], allow: tuple[str, ...], depth: int) -> set[str]:
    if not rest:
        return {mod.name}
    if depth > 40:
        raise _Untraceable("the alias chain is too long")
    head, tail = rest[0], rest[1:]
    binds, stars = _bindings(mod.file, mod.name, bool(mod.dirs)) if mod.file else ({}, ())
    if head in binds:
        found = [_follow_binding(mod, head, b, tail, allow, depth) for b in binds[head]]
        return set().union(*found)
    if sub := _submodule(mod, head):
        return _resolve(sub, tail, allow, depth + 1)
    found = [r for s in stars for r in _try(_canonical, ".".join([s, *rest]), allow, depth + 1)]
    if found:  # a star import brings only names its module defines
        return set().union(*found)
    kind = "a compiled module" if not (mod.file or mod.dirs) else mod.name
    raise _Untraceable(f"`{head}` is not defined in the source of {kind}")


def _follow_binding(mod: _Mod, head: str, bind: tuple, tail: list, allow: tuple, depth: int) -> set:
    kind, what = bind
    if kind in ("module", "from") and not _allowed(what, allow):
        return {".".join([what, *tail])}
    if kind == "module":  # `import a.b` binds module a.b: found by module name, not attribute
        return _resolve(_module(what), tail, allow, depth + 1)
    if kind == "from":
        base, _, attr = what.rpartition(".")
        if base != mod.name:
            return _resolve(_module(base), [attr, *tail], allow, depth + 1)
        if sub := _submodule(mod, attr):  # `from . import sub` inside the package itself
            return _resolve(sub, tail, allow, depth + 1)
    if kind == "value" and (chain := _attr_chain(what)):
        return _resolve(mod, chain + tail, allow, depth + 1)
    qual = f"{mod.name}.{head}"
    if not tail and kind != "from":
        return {qual}
    if kind == "class" and len(tail) == 1 and tail[0] in _class_members(what):
        return {f"{qual}.{tail[0]}"}
    raise _Untraceable(f"`{'.'.join([qual, *tail])}` is not a definition in the source")


def _attr_chain(expr: ast.expr) -> list[str] | None:
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Attribute) and (base := _attr_chain(expr.value)):
        return [*base, expr.attr]
    return None


def _class_members(node: ast.ClassDef) -> set[str]:
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {n.name for n in node.body if isinstance(n, defs)}


def _try(fn, *args) -> list:
    try:
        return [fn(*args)]
    except _Untraceable:
        return []


def _module(name: str) -> _Mod:
    mod = _top(name.split(".")[0])
    for part in name.split(".")[1:]:
        if not (mod := _submodule(mod, part)):
            raise _Untraceable(f"no source file for module `{name}`")
    return mod


def _top(name: str) -> _Mod:
    spec = importlib.util.find_spec(name)  # a top-level name is found without being imported
    if spec is None:
        raise _Untraceable(f"module `{name}` is not installed")
    file = Path(spec.origin) if spec.has_location and spec.origin.endswith(".py") else None
    return _Mod(name, file, tuple(Path(d) for d in spec.submodule_search_locations or ()))


def _submodule(mod: _Mod, part: str) -> _Mod | None:
    name = f"{mod.name}.{part}"
    for d in mod.dirs:
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
    """Module-level names of a source file: what each is bound to (all candidates)."""
    binds: dict[str, list] = {}
    stars: list[str] = []
    package = modname if is_pkg else modname.rpartition(".")[0]
    for node in _statements(ast.parse(file.read_bytes()).body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            binds.setdefault(node.name, []).append((kind, node))
        elif isinstance(node, ast.Import):
            for a in node.names:
                target = a.name if a.asname else a.name.partition(".")[0]
                binds.setdefault(a.asname or target, []).append(("module", target))
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            base = base if node.level else ""
            base = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                if a.name == "*":
                    stars.append(base)
                else:
                    binds.setdefault(a.asname or a.name, []).append(("from", f"{base}.{a.name}"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for t in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(t, ast.Name):
                    binds.setdefault(t.id, []).append(("value", node.value))
    return binds, tuple(stars)


def _statements(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _statements(node.body + node.orelse + node.finalbody)
            for h in node.handlers:
                yield from _statements(h.body)
        else:
            yield node
