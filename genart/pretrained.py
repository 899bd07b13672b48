"""One resolver for every weights file (explicit path → cache → one download → a clear error)
and a checkpoint loader that never unpickles code (weights_only + a tiny Lightning allow-list)."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genart.errors import UserError

log = logging.getLogger(__name__)

OFFLINE_ENV = ("GENART_OFFLINE", "HF_HUB_OFFLINE")
PROBE_TIMEOUT = 2.0  # seconds: decide "online" fast, so an offline run fails at once
READ_TIMEOUT = 30.0  # seconds per socket read once a download has started
CHUNK = 1 << 20


class WeightsNotFound(UserError):
    """A weights file is neither given, cached nor downloadable."""


# ---------------------------------------------------------------- resolve


def resolve_weights(spec: Mapping, key: str) -> Path:
    """Return a local file for a `weights:` node: path → cache → one download → WeightsNotFound."""
    path_key = key if key.endswith(".path") else f"{key}.path"
    if spec.get("path"):
        return _explicit_path(spec["path"], path_key)
    cached = find_cached(spec)
    if cached is not None:
        return cached
    if not (spec.get("url") or spec.get("hf_repo")):
        raise WeightsNotFound(_missing_message(spec, path_key, "the node names no url or hf_repo"))
    reason = _offline_reason(spec)
    if reason is None:
        try:
            return download(spec)
        except Exception as err:  # one attempt only; any failure ends in the same advice
            reason = f"a download attempt failed ({type(err).__name__}: {err})"
    raise WeightsNotFound(_missing_message(spec, path_key, reason))


def _explicit_path(path: str | os.PathLike, path_key: str) -> Path:
    """An explicit path must exist; say which setting named it if not."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise WeightsNotFound(
            f"{path_key}={path} does not exist (looked for {resolved.absolute()}). "
            f"Set {path_key} to a local copy, e.g. python -m genart {path_key}=/path/to/file"
        )
    return resolved


def cache_dir() -> Path:
    """genart's own cache: $GENART_CACHE, else ~/.cache/genart."""
    return Path(os.environ.get("GENART_CACHE") or "~/.cache/genart").expanduser()


def cache_name(spec: Mapping) -> str:
    """The cached file's name: `filename`, else the url's basename (or its ?p= file)."""
    if spec.get("filename"):
        return Path(spec["filename"]).name
    url = urllib.parse.urlparse(spec.get("url") or "")
    # share links (heibox, seafile) name the file in the query: .../files/?p=%2Fckpts%2Flast.ckpt
    shared = urllib.parse.parse_qs(url.query).get("p")
    name = Path(shared[0] if shared else urllib.parse.unquote(url.path)).name
    if url.path.endswith("/") and not shared:
        name = ""
    return name or hashlib.sha256(url.geturl().encode()).hexdigest()[:16]


def find_cached(spec: Mapping) -> Path | None:
    """The file in genart's cache or (for hf_repo) the HF hub cache; never touches the network."""
    local = cache_dir() / cache_name(spec)
    if local.is_file():
        return local
    if spec.get("hf_repo") and spec.get("filename"):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            spec["hf_repo"], spec["filename"], revision=spec.get("revision")
        )
        if isinstance(found, str) and Path(found).is_file():  # else None or a "known missing" mark
            return Path(found)
    return None


# ---------------------------------------------------------------- online?


def _offline_reason(spec: Mapping) -> str | None:
    """Why no download is attempted (offline flag or host unreachable), or None to go ahead."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"no download was attempted because {name}={os.environ[name]}"
    host, port = _probe_target(spec)
    if not is_reachable(host, port):
        return f"no download was attempted because {host}:{port} is unreachable (offline?)"
    return None


def _probe_target(spec: Mapping) -> tuple[str, int]:
    """The host a download would connect to first (a proxy when one is configured)."""
    if spec.get("url"):
        url = urllib.parse.urlparse(spec["url"])
    else:
        url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy:
        url = urllib.parse.urlparse(proxy if "//" in proxy else f"http://{proxy}")
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def is_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """A TCP connect within `timeout` s, DNS included (getaddrinfo has no timeout: a thread)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


# ---------------------------------------------------------------- download


def download(spec: Mapping) -> Path:
    """One download attempt: the url into genart's cache, or hf_repo via the HF hub cache."""
    if spec.get("url"):
        return download_url(spec["url"], cache_dir() / cache_name(spec), spec.get("sha256"))
    from huggingface_hub import hf_hub_download

    log.info("downloading %s from the Hugging Face Hub repo %s", spec["filename"], spec["hf_repo"])
    return Path(hf_hub_download(spec["hf_repo"], spec["filename"], revision=spec.get("revision")))


def download_url(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Stream `url` into dest.part, check it, then rename: a killed run never leaves half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # parallel sweep jobs never collide
    log.info("downloading %s → %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT) as response:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise OSError("the server sent an HTML page instead of the file (a dead link?)")
            digest = _copy_hashing(response, part)
            expected = response.headers.get("Content-Length")
        if expected and part.stat().st_size != int(expected):
            raise OSError(f"incomplete download: {part.stat().st_size} of {expected} bytes")
        if sha256 and digest != sha256.lower():
            raise OSError(f"sha256 mismatch: got {digest}, expected {sha256}")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _copy_hashing(stream: Any, path: Path) -> str:
    """Copy a byte stream into a file; return its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _missing_message(spec: Mapping, path_key: str, reason: str) -> str:
    """One paragraph: what is missing, where it comes from, and how to point at a local copy."""
    name = cache_name(spec)
    size = f" (~{spec['size_mb']} MB)" if spec.get("size_mb") else ""
    if spec.get("url"):
        origin = f"It comes from {spec['url']}"
    elif spec.get("hf_repo"):
        origin = f"It comes from the Hugging Face Hub: repo {spec['hf_repo']}, file {name}"
    else:
        origin = "Its source is unknown"
    return (
        f"Weights file {name}{size} not found: {path_key} is not set, it is not in the cache "
        f"({cache_dir() / name}), and {reason}. {origin}. Set {path_key} to a local copy, "
        f"e.g. python -m genart {path_key}=/path/to/file"
    )


# ---------------------------------------------------------------- walk a config


def find_weights_nodes(cfg_container: Any, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, node) for every dict stored under a key named `weights` in a plain container."""
    if isinstance(cfg_container, Mapping):
        items = [(str(k), v) for k, v in cfg_container.items()]
    elif isinstance(cfg_container, list | tuple):
        items = [(str(i), v) for i, v in enumerate(cfg_container)]
    else:
        return []
    found: list[tuple[str, dict]] = []
    for name, value in items:
        key = f"{prefix}.{name}" if prefix else name
        if name == "weights" and isinstance(value, dict):
            found.append((key, value))
        else:
            found.extend(find_weights_nodes(value, key))
    return found


def resolve_all_weights(cfg):
    """Point every `weights:` node at a local file, before any heavy import (fail fast)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    for key, node in find_weights_nodes(container):
        node["path"] = str(resolve_weights(node, key))
    return OmegaConf.create(container)


# ---------------------------------------------------------------- load a checkpoint


class LightningModelCheckpoint:
    """Inert stand-in for the ModelCheckpoint class Lightning ≤1.4 pickles as a `callbacks` key."""


# Old Lightning (taming's 2020 checkpoints: PL ~1.0) stores `callbacks` as {CallbackClass: state};
# that class is the one non-tensor global such files carry (the `Unsupported global` the
# VQGAN+CLIP community hit). The stand-in keeps the key hashable and runs no code.
LIGHTNING_GLOBALS = [
    (LightningModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
]
REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)|new object .* got <class '([^']+)'>")
HTML_START = (b"<!doctype html", b"<html", b"<?xml", b"<head")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) with the Lightning stand-ins; anything else → UserError."""
    import torch

    path = Path(path)
    _check_not_obviously_broken(path)
    try:
        with torch.serialization.safe_globals(LIGHTNING_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, str(err)) from None
    except EOFError:
        raise _not_a_checkpoint(path, "it ends early (an incomplete download?)") from None
    except (RuntimeError, ValueError, OSError) as err:
        why = f"{type(err).__name__}: {_first_sentence(str(err))}"
        raise _not_a_checkpoint(path, why) from None
    if not isinstance(checkpoint, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _check_not_obviously_broken(path: Path) -> None:
    """Empty files and saved error pages (dead download links) get their own message."""
    with open(path, "rb") as f:
        head = f.read(256).lstrip().lower()
    if not head:
        raise _not_a_checkpoint(path, "the file is empty")
    if head.startswith(HTML_START):
        raise _not_a_checkpoint(path, "it is an HTML page (a download that saved an error page?)")


def _refusal(path: Path, message: str) -> UserError:
    """The weights-only unpickler met a global outside the allow-list (or a non-pickle)."""
    found = REFUSED_GLOBAL.search(message)
    if not found:
        core = message.split("WeightsUnpickler error:")[-1]
        return _not_a_checkpoint(path, f"torch's unpickler stopped at {_first_sentence(core)}")
    name = found[1] or found[2]
    return UserError(
        f"Refusing to load {path}: unpickling it would load the global {name}, which is "
        "not a tensor, a plain container or one of the known Lightning checkpoint classes. genart "
        "refuses to unpickle arbitrary code (a checkpoint path can come from a shared preset); "
        "use a checkpoint that holds only weights, or re-save its state_dict in a trusted session."
    )


def _first_sentence(text: str) -> str:
    """The first non-empty line of an error, up to its first full stop."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "an unknown error")
    return line.split(". ")[0].rstrip(".")


def _not_a_checkpoint(path: Path, why: str) -> UserError:
    """A file that is not a PyTorch checkpoint at all."""
    return UserError(
        f"{path} is not a PyTorch checkpoint: {why}. Check the file (a complete download of the "
        "weights named in the config) and point the weights path at it."
    )
