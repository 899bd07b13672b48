"""Version guards of the speed-ups that reach into kornia's, open_clip's and taming's internals.

Each `Patch` names the library versions it was written and tested against and checks the
internals it relies on. Outside that range, when the check fails, or when GENART_NO_PATCHES lists
it, the library's own path runs instead: the same results, slower. genart says so once per patch.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ENV = "GENART_NO_PATCHES"  # comma-separated patch names; 1 or all: every patch
_versions: dict[str, str | None] = {}
_warned: set[str] = set()


class PatchFallbackWarning(UserWarning):
    """A speed-up is off: the library's own path runs (same results, slower)."""


@dataclass(frozen=True)
class Patch:
    """A speed-up that relies on a library's internals."""

    name: str  # what GENART_NO_PATCHES lists, e.g. "fast_hue"
    library: str  # the distribution whose internals it relies on, e.g. "kornia"
    versions: str  # the range it was written and tested against, e.g. ">=0.7.2,<0.10"
    what: str  # the speed-up in words, for the warning
    check: Callable[[], str | None]  # why the internals it relies on do not fit, or None


def listed_off(name: str) -> bool:
    """Does GENART_NO_PATCHES switch this patch off?"""
    listed = {item.strip().lower() for item in os.environ.get(ENV, "").split(",")}
    return bool(listed & {name, "1", "all"})


def installed_version(library: str) -> str | None:
    """The installed version of the distribution `library`, or None (read once: 0.4 ms)."""
    if library not in _versions:
        try:
            _versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            _versions[library] = None
    return _versions[library]


def outside_range(library: str, versions: str) -> str | None:
    """Why the installed `library` is not within `versions`, or None."""
    version = installed_version(library)
    try:
        inside = version is not None and SpecifierSet(versions).contains(
            Version(version), prereleases=True
        )
    except InvalidVersion:
        inside = False
    return None if inside else f"{library} {version} is outside the tested range {versions}"


@functools.cache
def internals_differ(patch: Patch) -> str | None:
    """Why `patch` does not fit the installed library (version, then internals), or None."""
    reason = outside_range(patch.library, patch.versions)
    if reason is not None:
        return reason
    try:
        return patch.check()
    except Exception as error:  # whatever it raised, the internals are not the ones it knows
        return f"checking {patch.library}'s internals raised {error!r}"


def why_off(patch: Patch) -> str | None:
    """None if `patch` applies, else why the library's own path runs."""
    if listed_off(patch.name):
        return f"{ENV} lists it"
    return internals_differ(patch)


def applies(patch: Patch) -> bool:
    """Whether to use `patch`; warns once per patch when it is off."""
    reason = why_off(patch)
    if reason is not None and patch.name not in _warned:
        _warned.add(patch.name)
        warnings.warn(
            f"genart: {patch.what} ({patch.name}) is off: {reason}; "
            f"results are unchanged but slower.",
            PatchFallbackWarning,
            stacklevel=3,
        )
    return reason is None


def forget() -> None:
    """Forget the cached versions, checks and warnings (after the environment changed)."""
    _versions.clear()
    internals_differ.cache_clear()
    _warned.clear()


def parameters_differ(function: Callable, *names: str) -> str | None:
    """Why `function`'s parameters are not `names`, in order, or None."""
    found = tuple(inspect.signature(function).parameters)
    if found == names:
        return None
    return f"{function.__qualname__} takes {found}, not {names}"


def first_difference(*reasons: str | None) -> str | None:
    """The first of the reasons that is not None."""
    return next((reason for reason in reasons if reason is not None), None)
