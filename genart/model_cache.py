"""Built generator, guide and scorer models kept in the worker process for the next job of a sweep.

What: per role ("generator", "guide", "scorer") the one model the last job built, after
`.to(device)`, precision and compile, so a sweep's later jobs skip reading and converting the
weights (the basic launcher runs them in one process; joblib's and Ray's workers run many).
Key: the role's resolved config node, the device, the resolved precision, the kernel plan, the
compile flag, and the (path, mtime, size) of every file the node names. A new key evicts the
role's old model (on CUDA its memory is returned), so the cache holds at most the models of the
last job's config: one generator, one guide, one scorer.

Why it is safe: a cached model gives the same pixels as a fresh one because, before it is kept,
its reuse is rehearsed from the random state the build started in, and it is kept only if the
rehearsal ends where the build did:
- a generator's θ is per run: it is kept only if it has `new_run()`, which re-draws θ as its
  constructor does, and only if that re-draw gives the same θ and leaves every RNG (torch, numpy,
  random) where the whole build left it, i.e. the frozen network drew nothing;
- a guide or scorer is frozen, but building it may draw from the global torch RNG (open_clip's
  random init before the weights load), which moves the cutouts' later draws: the build's draws
  are recorded (op, shapes, dtypes) and replayed on a reuse, kept only if the replay ends in the
  state the build ended in. `new_run()`, where present, drops what the last run left (text
  embeddings, prompts already warned about).
A model whose rehearsal fails is built per job, as with cache_models=false. The replay draws as
many random numbers as the build's init did (cheaper than reading and converting the weights,
not free). Submodules get back the train/eval modes they had when built. Only `render()` uses
kept models (`Run.keep_models`): its jobs run one after another in a process, never two at once
on one model, while the bench tools, which hold several runs at once, build their own.
"""

from __future__ import annotations

import functools
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from genart.runtime import rng_state, set_rng_state


@dataclass
class Entry:
    """The last job's model of one role, with how to ready it for the next job."""

    key: str
    model: Any
    refresh: Callable[[], None]
    modes: dict = field(default_factory=dict)  # submodule name -> training flag when built
    hits: int = 0


_CACHE: dict[str, Entry] = {}


def load(role: str, node: Any, context: dict, build: Callable[[], Any], enabled: bool = True):
    """The model `build()` makes for `node`: the kept one, readied for a new run, if the key matches."""
    if not enabled:
        clear()
        return build()
    key = cache_key(node, context)
    entry = _CACHE.get(role)
    if entry is not None and entry.key == key:
        entry.refresh()
        restore_modes(entry.model, entry.modes)
        entry.hits += 1
        return entry.model
    evict(role)
    model, refresh = build_rehearsed(build)
    if refresh is not None:
        _CACHE[role] = Entry(key, model, refresh, training_modes(model))
    return model


def hits(role: str) -> int:
    """How many jobs reused the kept model of `role` (0 when none is kept)."""
    entry = _CACHE.get(role)
    return entry.hits if entry else 0


def cache_key(node: Any, context: dict) -> str:
    """Everything that decides the built model, as one string."""
    files = {path: list(stat) for path, stat in file_stats(node)}
    return json.dumps({"node": node, "files": files, **context}, sort_keys=True, default=str)


def file_stats(node: Any):
    """(path, (mtime_ns, size)) of every string in `node` naming an existing file."""
    if isinstance(node, dict):
        for value in node.values():
            yield from file_stats(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from file_stats(value)
    elif isinstance(node, str) and len(node) < 4096 and Path(node).is_file():
        stat = Path(node).stat()
        yield node, (stat.st_mtime_ns, stat.st_size)


def evict(role: str) -> None:
    """Forget the kept model of `role` and give its memory back (CUDA's cache too)."""
    if _CACHE.pop(role, None) is None:
        return
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def clear() -> None:
    """Forget every kept model (cache_models=false)."""
    for role in list(_CACHE):
        evict(role)


def training_modes(model: Any) -> dict:
    modules = model.named_modules() if isinstance(model, torch.nn.Module) else ()
    return {name: module.training for name, module in modules}


def restore_modes(model: Any, modes: dict) -> None:
    if isinstance(model, torch.nn.Module):
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


# ---------------------------------------------------------------- rehearsal


def build_rehearsed(build: Callable[[], Any]):
    """(model, refresh), refresh None when reusing the model would not give a fresh build's run."""
    before = rng_state()
    with DrawRecorder() as recorder:
        model = build()
    after = rng_state()
    draws = [] if same_state(before, after) else recorder.draws  # seeded, forked draws net out
    if not isinstance(model, torch.nn.Module):  # no network to keep (clip_prompt's scorer)
        return model, None
    refresh = refresher(model, draws)
    if refresh is None or not rehearse(refresh, model, before, after):
        return model, None
    return model, refresh


def refresher(model: Any, draws: list) -> Callable[[], None] | None:
    """What readies a kept model for a new run; None for a generator that cannot re-draw θ."""
    new_run = getattr(model, "new_run", None)
    if hasattr(model, "theta"):  # a generator: θ is the run's, drawn by its constructor
        return new_run

    def refresh() -> None:
        replay(draws)
        if new_run:
            new_run()

    return refresh


def rehearse(refresh: Callable[[], None], model: Any, before: dict, after: dict) -> bool:
    """Does `refresh` from the build's starting RNG state re-create θ and end where the build did?"""
    theta = [p.detach().clone() for p in thetas(model)]
    try:
        set_rng_state(before)
        refresh()
        same_theta = all(torch.equal(p, q) for p, q in zip(thetas(model), theta, strict=True))
        return same_theta and same_state(rng_state(), after)
    finally:
        with torch.no_grad():
            for p, q in zip(thetas(model), theta, strict=True):
                p.copy_(q)
        set_rng_state(after)


def thetas(model: Any) -> list:
    return list(model.theta()) if hasattr(model, "theta") else []


def same_state(a: Any, b: Any) -> bool:
    """Equality of two `rng_state()`s (tensors compared by value)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@dataclass(frozen=True)
class Blank:
    """A tensor's layout, for replaying a draw into scratch memory."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype
    device: torch.device


def blank(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Blank(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)
    return value


def scratch(value: Any) -> Any:
    if isinstance(value, Blank):
        return torch.empty_strided(
            value.shape, value.stride, dtype=value.dtype, device=value.device
        )
    return value


class DrawRecorder(TorchDispatchMode):
    """Records each op that draws from a default (global) generator: op, argument layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if draws_globally(func, args, kwargs):
            self.draws.append((func, tree_map(blank, args), tree_map(blank, kwargs)))
        return func(*args, **kwargs)


def draws_globally(func, args: tuple, kwargs: dict) -> bool:
    """Does this aten op draw from the default generator: a `generator` argument left unset, or a
    random op's overload without one (`aten.randn.default`)?"""
    for i, argument in enumerate(func._schema.arguments):
        if argument.name == "generator":
            if argument.kwarg_only or i >= len(args):
                return kwargs.get("generator") is None
            return args[i] is None
    return is_random(func)


@functools.cache
def is_random(func) -> bool:
    """Has the op an overload that takes a generator (so this one uses the default)?"""
    packet = func.overloadpacket
    return any(takes_generator(getattr(packet, name)) for name in packet.overloads())


def takes_generator(func) -> bool:
    return any(argument.name == "generator" for argument in func._schema.arguments)


@torch.no_grad()
def replay(draws: list) -> None:
    """The recorded draws again, into scratch tensors: the RNG advances as in the build."""
    for func, args, kwargs in draws:
        func(*tree_map(scratch, args), **tree_map(scratch, kwargs))
