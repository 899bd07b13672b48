"""Refuses shared presets that would change Hydra's own config or build objects genart does not.

The check judges what Hydra composes, not the preset's text: it composes genart's config with
and without each named preset (Hydra's compose API, on the run's search path). With the preset,
the `hydra` node must be unchanged, every `_target_` it brings must be an exact name genart's own
conf/ uses (or one the user allowed), and what it brings may not call resolvers that build config
nodes or read the environment.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from genart.errors import UserError

# Every `_target_` in genart's conf/ (tests/test_safety.py regenerates the list and compares):
# exact names, because a module prefix such as `genart.` also reaches functions that write files.
ALLOWED_TARGETS = frozenset(
    {
        "genart.callbacks.checkpoint.CheckpointCallback",
        "genart.callbacks.frames.FramesCallback",
        "genart.callbacks.stats.StatsCallback",
        "genart.callbacks.wandb.WandbCallback",
        "genart.cutouts.CompositionWindows",
        "genart.cutouts.Cutouts",
        "genart.cutouts.PooledCutouts",
        "genart.generators.pixels.PixelGenerator",
        "genart.generators.sdxl.SDXLGenerator",
        "genart.generators.vqgan.VQGANGenerator",
        "genart.guides.CLIPModel",
        "genart.guides.Guide",
        "genart.losses.EdgeSymmetryLoss",
        "genart.losses.InitImageLoss",
        "genart.losses.PromptLoss",
        "genart.losses.SemanticSymmetryLoss",
        "genart.losses.TVLoss",
        "genart.losses.ToneSymmetryLoss",
        "genart.prompt_weights.SizeWeighting",
        "genart.prompts.PromptSchedule",
        "genart.samplers.SampleUpdater",
        "genart.scorers.CLIPPromptScorer",
        "genart.scorers.LAIONAestheticScorer",
        "genart.scorers.NIMAScorer",
        "genart.seed_images.two_blotches",
        "genart.tools.sweep_summary.SweepCallback",
        "genart.updaters.GradientUpdater",
        "kornia.augmentation.ColorJitter",
        "kornia.augmentation.RandomAffine",
        "kornia.augmentation.RandomErasing",
        "kornia.augmentation.RandomPerspective",
        "torch.optim.Adam",
        "torch.optim.AdamW",
    }
)
# Retired `_target_` names → the same class's name in genart now. A preset that names a retired
# one is refused with the new name: allowing it would only fail later, at import.
MOVED_TARGETS = {"genart.cutouts.SizeWeighting": "genart.prompt_weights.SizeWeighting"}
PRESET_GROUP = "preset"
OVERRIDE = re.compile(r"^(\+\+|\+|~)?([\w./-]+?)(@[\w.-]*)?=(.*)$")  # prefix, key, @package, value
_BUILDS = "can build config nodes (and so a hidden `_target_`) from text"
_REFUSED_RESOLVERS = {
    "oc.decode": _BUILDS,
    "oc.create": _BUILDS,
    "oc.env": "reads an environment variable (a token or password would be copied into the "
    "run's config, its W&B run and any preset saved from it)",
}
LATENT_KEY = "start_latent"  # init.start_latent: in a preset, relative to the preset file
_UNSET = object()  # a key one of two configs lacks (no value can pass for it)


class _Choice(NamedTuple):
    override: str  # one option, as Hydra composes it: `+preset=a`
    name: str  # as the user names it: `doorways/forest`
    path: Path  # the file Hydra will find first


def check_presets(
    argv: list[str], search_dirs: list[Path], *, main_config: Path | None = None
) -> None:
    """Compose every preset the command line names and refuse it if it is unsafe (a UserError).

    `argv` may be the whole command line. `search_dirs` are the user's preset dirs (each holds
    preset/NAME.yaml), which the run puts on Hydra's search path, as do `--config-dir` and
    `hydra.searchpath=[...]`. `main_config` is the primary config (default conf/config.yaml).
    """
    if not _preset_overrides(argv):
        return  # nothing to check: no file read, no Hydra imported
    main = read_main_config(main_config)
    primary = (main_config or conf_dir() / "config.yaml").resolve().parent
    entries = _searchpath(argv, search_dirs, primary, main)
    dirs = [primary, *(d for e in entries if "${" not in e and (d := searchpath_dir(e)))]
    choices = [_locate_required(o, n, dirs) for o, n in _preset_choices(argv, dirs)]
    allow = _allowed_targets(main)
    with _composer(argv, entries, main_config) as compose:
        base = compose(None)
        for choice in choices:
            cfg = compose(choice)
            _judge(cfg, base, choice, allow)
            _check_start_latent(cfg, base, choice, dirs)


def _allowed_targets(main: dict) -> frozenset[str]:
    """ALLOWED_TARGETS + GENART_ALLOW_TARGETS + `security.allow_targets` of the main config."""
    extra = os.environ.get("GENART_ALLOW_TARGETS", "").split(",")
    listed = (main.get("security") or {}).get("allow_targets") or []
    extra += listed.split(",") if isinstance(listed, str) else [str(p) for p in listed]
    return ALLOWED_TARGETS | {p.strip() for p in extra if p.strip()}


def conf_dir() -> Path:
    """The installed `conf` package: the app's primary config dir (found, not imported)."""
    return Path(next(iter(importlib.util.find_spec("conf").submodule_search_locations)))


def read_main_config(main_config: Path | None = None) -> dict:
    """The main config file (conf/config.yaml) as plain YAML: no preset can reach into it."""
    path = main_config or conf_dir() / "config.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster at start-up
    data = yaml.load(path.read_text(), Loader=loader) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def available_presets(search_dirs: list[Path]) -> list[str]:
    """Every `preset/**.yaml` under the search dirs, as `+preset=` names."""
    found = [
        p.relative_to(d / PRESET_GROUP)
        for d in search_dirs
        for p in (d / PRESET_GROUP).rglob("*.yaml")
    ]
    return sorted({p.with_suffix("").as_posix() for p in found})


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


def _tokens(value: str) -> list[str]:
    """The names in an override value: `a`, `a,b`, `[a,b]`, `choice(a,b)`, `glob(a*,exclude=b)`."""
    value = re.sub(r"\w+\s*=\s*", " ", value)  # keyword arguments: keep their values (over-scan)
    value = re.sub(r"\b\w+\(", " ", value)  # choice( glob( sort( shuffle(
    return [t for t in re.split(r"[\s,()\[\]'\"]+", value) if t and t != "null"]


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Values of `--flag value` and `--flag=value`."""
    pairs = zip(argv, [*argv[1:], ""], strict=False)  # value: the next arg
    return [v for a, v in pairs if a in flags] + [
        a.partition("=")[2] for a in argv if a.partition("=")[0] in flags
    ]


def _typed_searchpath(argv: list[str]) -> list[str] | None:
    """The entries of the last `hydra.searchpath=[...]` on the command line, if any."""
    typed = [m[4] for a in argv if (m := OVERRIDE.match(a)) and m[2] == "hydra.searchpath"]
    return _tokens(typed[-1]) if typed else None


def _preset_overrides(argv: list[str]) -> list[re.Match]:
    """Overrides that select presets: `+preset=a,b`, `preset/sub=x`, `+preset@pkg=x`, ..."""
    found = [(o, OVERRIDE.match(o.strip())) for o in argv]
    return [
        m for o, m in found if m and m[1] != "~" and m[2].strip("/").split("/")[0] == PRESET_GROUP
    ]


def _preset_choices(argv: list[str], dirs: list[Path]) -> list[tuple[str, str]]:
    """(override, name) for every single option of every override that selects a preset."""
    found = []
    for m in _preset_overrides(argv):
        o, group = m[0], m[2].strip("/")
        for name in _tokens(m[4]):
            if "$" in name:
                raise UserError(f"Cannot check the presets of `{o}`: name them directly.")
            if m[4].lstrip().startswith("glob("):
                options = {p.stem for d in dirs for p in (d / group).glob("*.yaml")}
                names = sorted(n for n in options if fnmatch.fnmatch(n, name))
            else:
                names = [name]
            prefix = m[1] or "+"  # `preset=x` fails in Hydra; `+preset=x` is what it means
            found += [(f"{prefix}{m[2]}{m[3] or ''}={n}", f"{group}/{n}") for n in names]
    return found


def _locate_required(override: str, name: str, dirs: list[Path]) -> _Choice:
    if paths := [d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()]:
        return _Choice(override, name.removeprefix(PRESET_GROUP + "/"), paths[0])
    name = name.removeprefix(PRESET_GROUP + "/")
    raise UserError(
        f"Preset '{name}' not found: no {name}.yaml in "
        f"{', '.join(str(d / PRESET_GROUP) for d in dirs)}. Available presets: "
        f"{', '.join(available_presets(dirs)) or 'none'}. To add a directory of presets, set "
        f"GENART_PRESETS_DIR=DIR (it must hold DIR/preset/{name}.yaml) or pass "
        f"hydra.searchpath=[file:///abs/DIR]."
    )


def _searchpath(argv: list[str], search_dirs: list[Path], primary: Path, main: dict) -> list[str]:
    """Hydra's search path after the primary config, as the run gets it: --config-dir first, then
    hydra.searchpath from the command line, else the user's preset dirs (genart.cli adds them),
    else the main config's."""
    config_dirs = [
        f"file://{os.path.abspath(d)}" for d in _flag_values(argv, ("-cd", "--config-dir"))
    ]
    users = [f"file://{d}" for d in search_dirs if Path(d).resolve() != primary]
    typed = _typed_searchpath(argv)
    if typed is None:
        typed = users or (main.get("hydra") or {}).get("searchpath") or []
    return [*config_dirs, *map(str, typed)]


@contextlib.contextmanager
def _composer(
    argv: list[str], entries: list[str], main_config: Path | None
) -> Iterator[Callable[[_Choice | None], Any]]:
    """compose(choice): the config with Hydra's node, as the run composes it (None: no preset)."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    from genart.overrides import quote

    fixed = [f"hydra.searchpath=[{','.join(map(quote, entries))}]"] if entries else []
    name = ([*_flag_values(argv, ("-cn", "--config-name")), "config"])[0]
    if main_config:
        primary = str(main_config.resolve().parent)
        name, init = main_config.stem, initialize_config_dir(primary, version_base="1.3")
    else:
        init = initialize_config_module(config_module="conf", version_base="1.3")

    def _compose(choice: _Choice | None) -> Any:
        extra = [choice.override] if choice else []
        try:
            return compose(name, [*fixed, *extra], return_hydra_config=True)
        except Exception as e:  # Hydra raises many types; the run would stop on each the same way
            raise _refusal(
                choice, f"Hydra cannot compose it: {' '.join(str(e).split())}", ""
            ) from None

    with warnings.catch_warnings(), init:  # the run itself repeats Hydra's warnings
        warnings.simplefilter("ignore")
        yield _compose


def _refusal(choice: _Choice | None, what: str, fix: str) -> UserError:
    fix = fix or "Hydra would stop the run the same way: fix the file or leave the preset out."
    if choice is None:  # the config without any preset: nothing to refuse, nothing to check
        return UserError(f"Cannot check the presets on this search path: {what}. {fix}")
    return UserError(f"Refusing preset '{choice.name}' ({choice.path}): {what}. {fix}")


def _judge(cfg: Any, base: Any, choice: _Choice, allow: frozenset[str]) -> None:
    from omegaconf import OmegaConf

    _check_hydra_node(OmegaConf.to_container(cfg.hydra), OmegaConf.to_container(base.hydra), choice)
    job, before = (_leaves(OmegaConf.to_container(c, resolve=False)) for c in (cfg, base))
    brought = {
        k: v
        for k, v in job.items()
        if not k.startswith("hydra.") and not _same(before.get(k, _UNSET), v)
    }
    for key, value in brought.items():
        _check_resolvers(key, value, choice)
    before_targets = dict(_targets(base))
    for key, target in _targets(cfg):
        if before_targets.get(key) != target:
            _check_target(key, target, choice, allow)


def _check_start_latent(cfg: Any, base: Any, choice: _Choice, dirs: list[Path]) -> None:
    """A preset's `init.start_latent` must name a file inside the preset dirs, relative to it."""
    value = (cfg.get("init") or {}).get(LATENT_KEY)
    if value is None or _same((base.get("init") or {}).get(LATENT_KEY), value):
        return
    try:
        preset_latent_path(str(value), choice.path, dirs)
    except UserError as e:
        raise _refusal(choice, str(e), "Keep the latent beside the preset file.") from None


def preset_latent_path(value: str, preset_file: Path, dirs: list[Path]) -> Path:
    """A preset's init.start_latent, resolved relative to the preset file (links followed);
    refused (UserError) if absolute or outside every preset dir (<dir>/preset)."""
    roots = [(Path(d) / PRESET_GROUP).resolve() for d in dirs]
    path = (Path(preset_file).parent / value).resolve()
    if Path(value).is_absolute() or "${" in value or not any(path.is_relative_to(r) for r in roots):
        raise UserError(
            f"its init.start_latent={value} is not a path relative to the preset file that "
            f"stays inside the preset dirs ({', '.join(map(str, roots))}); it resolves to {path}"
        )
    return path


def start_latent_file(value: str) -> Path:
    """The file `init.start_latent=<value>` names: relative to the preset file when a preset of
    this Hydra run sets that value, else (typed by the user) as given, relative to the cwd."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return Path(value)
    runtime = HydraConfig.get().runtime
    sources = [searchpath_dir(f"{s.schema}://{s.path}") for s in runtime.config_sources]
    dirs = [d for d in sources if d is not None]
    for key, name in runtime.choices.items():
        if name is None or key.partition("@")[0].split("/")[0] != PRESET_GROUP:
            continue
        group = key.partition("@")[0]
        files = [d / group / f"{name}.yaml" for d in dirs if (d / group / f"{name}.yaml").is_file()]
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(files[0].read_text(), Loader=loader) if files else None
        init = (data or {}).get("init") if isinstance(data, dict) else None
        if isinstance(init, dict) and init.get(LATENT_KEY) == value:
            return preset_latent_path(value, files[0], dirs)
    return Path(value)


def _leaves(node: Any, key: str = "") -> dict[str, Any]:
    """{`a.b[0].c`: value} for every scalar of a plain container."""
    if isinstance(node, dict):
        items = ((f"{key}.{k}" if key else str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(node))
    else:
        return {key: node}
    return {k: v for sub, child in items for k, v in _leaves(child, sub).items()}


def _check_hydra_node(node: dict, before: dict, choice: _Choice) -> None:
    """Only what Hydra derives from the override itself may differ: the override in the task's
    list, the job's override_dirname and the chosen options of genart's (not Hydra's) groups."""
    if node["overrides"]["task"][-1:] == [choice.override]:
        node["overrides"]["task"].pop()
    node["job"]["override_dirname"] = before["job"]["override_dirname"]
    for n in (node, before):
        choices = n["runtime"]["choices"]
        n["runtime"]["choices"] = {k: v for k, v in choices.items() if k.startswith("hydra/")}
    now, then = _leaves(node, "hydra"), _leaves(before, "hydra")
    changed = sorted(
        (k for k in {*now, *then} if not _same(now.get(k, _UNSET), then.get(k, _UNSET))),
        key=lambda k: ("runtime.choices" not in k, k),  # a swapped Hydra group explains the rest
    )
    if changed:
        shown = "; ".join(
            f"`{k}` is {_show(now.get(k, _UNSET))} (without the preset: {_show(then.get(k, _UNSET))})"
            for k in changed[:3]
        )
        more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise _refusal(
            choice,
            f"it changes Hydra's own config: {shown}{more}. Hydra builds log handlers, callbacks "
            f"and launchers from that node, makes the run dir and applies hydra.job.env_set "
            f"before genart can check anything, so a preset may not change it",
            "If you trust this preset, move those settings to your own command line or config.",
        )


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type: 1, 1.0 and true are three different settings here."""
    return type(a) is type(b) and a == b


def _show(value: Any) -> str:
    text = "not set" if value is _UNSET else repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _check_resolvers(key: str, value: Any, choice: _Choice) -> None:
    """Refuse the resolvers of _REFUSED_RESOLVERS, and any whose name is built by interpolation."""
    from omegaconf import grammar_parser
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Parser

    if not isinstance(value, str) or "${" not in value:
        return
    try:
        todo = [grammar_parser.parse(value)]  # the parse tree OmegaConf resolves
    except GrammarParseError:  # OmegaConf refuses to resolve it too: no resolver runs
        return
    while todo:
        node = todo.pop()
        todo += getattr(node, "children", None) or []
        if not isinstance(node, Parser.InterpolationResolverContext):
            continue
        name = node.resolverName().getText()
        if node.resolverName().interpolation():
            why = "has a name built from other values, so it could be any resolver"
        elif not (why := _REFUSED_RESOLVERS.get(name, "")):
            continue
        raise _refusal(
            choice,
            f"`{key}` calls the resolver `{name}`, which {why}",
            "Write the values out plainly, or move this setting into your own config if you "
            "trust it.",
        )


def _targets(node: Any, key: tuple = ()) -> Iterator[tuple[str, tuple[Any, Any]]]:
    """(`a.b[0]._target_`, (as written, resolved)) for every `_target_` outside the `hydra` node."""
    from omegaconf import Container, DictConfig, ListConfig, OmegaConf

    if key and key[-1] == "_target_":
        written = OmegaConf.to_container(node) if isinstance(node, Container) else node._value()
        try:
            value = node._get_parent()["_target_"]
        except Exception as e:  # an interpolation the check cannot resolve: judged as written
            value = _Unresolved(" ".join(str(e).split()))
        yield _dotted(key), (written, value)
    elif isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
        for k in node.keys():
            if key or k != "hydra":
                yield from _targets(node._get_node(k), (*key, k))
    elif isinstance(node, ListConfig) and not node._is_missing() and not node._is_none():
        for i in range(len(node)):
            yield from _targets(node._get_node(i), (*key, i))


class _Unresolved(str):
    """The reason a `_target_` could not be resolved."""


def _dotted(key: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")


def _check_target(
    key: str, target: tuple[Any, Any], choice: _Choice, allow: frozenset[str]
) -> None:
    written, value = target
    if isinstance(value, str) and value in MOVED_TARGETS:
        raise _refusal(
            choice,
            f"`{key}` names `{value}`, which moved to `{MOVED_TARGETS[value]}`",
            f"Edit the preset: write `_target_: {MOVED_TARGETS[value]}`.",
        )
    if isinstance(value, _Unresolved):
        what = f"`{key}` is `{written}`, which cannot be resolved before the run ({value})"
    elif isinstance(value, str) and value in allow:
        return
    else:
        what = (
            f"`{key}` names `{value}`, which is not one of the `_target_`s genart's own conf/ "
            f"uses. Hydra imports and calls a `_target_` when the run builds its objects, so a "
            f"preset could run any code or write any file (some of genart's own functions do)"
        )
    name = value if isinstance(value, str) and not isinstance(value, _Unresolved) else written
    raise _refusal(
        choice,
        what,
        f"If you trust this preset and its author, allow that exact name with "
        f"GENART_ALLOW_TARGETS={name} (comma-separated exact names) or under "
        f"security.allow_targets in genart's conf/config.yaml.",
    )
