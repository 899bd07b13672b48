"""One resolver for every pretrained file, the config's `pretrained:` nodes (explicit path → cache
→ one download → a clear error; whole HF repos through genart.hf_snapshots), the move of configs
that still call that node `weights:`, and a checkpoint loader that never unpickles code
(weights_only + a tiny Lightning allow-list)."""

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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from genart.errors import UserError
from genart.hf_snapshots import is_snapshot, resolve_snapshot
from genart.overrides import key_of

log = logging.getLogger(__name__)

OFFLINE_ENV = ("GENART_OFFLINE", "HF_HUB_OFFLINE")
PROBE_TIMEOUT = 2.0  # seconds: decide "online" fast, so an offline run fails at once
READ_TIMEOUT = 30.0  # seconds per socket read once a download has started
CHUNK = 1 << 20


class PretrainedNotFound(UserError):
    """A pretrained file is neither given, cached nor downloadable."""


# ---------------------------------------------------------------- resolve


def resolve_pretrained(spec: Mapping, key: str) -> Path:
    """A local file (whole repo: a folder): path → cache → one download → PretrainedNotFound."""
    path_key = key if key.endswith(".path") else f"{key}.path"
    if is_snapshot(spec):
        return resolve_snapshot(spec, path_key)
    if spec.get("path"):
        return _explicit_path(spec["path"], path_key)
    cached = find_cached(spec)
    if cached is not None:
        return cached
    if not (spec.get("url") or spec.get("hf_repo")):
        raise PretrainedNotFound(
            _missing_message(spec, path_key, "the node names no url or hf_repo")
        )
    reason = offline_reason(spec)
    if reason is None:
        try:
            return download(spec)
        except Exception as err:  # one attempt only; any failure ends in the same advice
            reason = f"a download attempt failed ({type(err).__name__}: {err})"
    raise PretrainedNotFound(_missing_message(spec, path_key, reason))


def _explicit_path(path: str | os.PathLike, path_key: str) -> Path:
    """An explicit path must exist; say which setting named it if not."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise PretrainedNotFound(
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


def offline_reason(spec: Mapping) -> str | None:
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
        f"Pretrained file {name}{size} not found: {path_key} is not set, it is not in the cache "
        f"({cache_dir() / name}), and {reason}. {origin}. Set {path_key} to a local copy, "
        f"e.g. python -m genart {path_key}=/path/to/file"
    )


# ---------------------------------------------------------------- walk a config


def find_pretrained_nodes(cfg_container: Any, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, node) for every dict stored under a key named `pretrained` in a plain container."""
    found: list[tuple[str, dict]] = []
    for name, value in _children(cfg_container).items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name == KEY and isinstance(value, dict):
            found.append((key, value))
        else:
            found.extend(find_pretrained_nodes(value, key))
    return found


def resolve_all_pretrained(cfg):
    """Point every `pretrained:` node at a local file or folder, before any heavy import.

    A model the run will not use (`unused_models`) is set to null instead: an offline run with
    clip_guidance.decoder=vae never needs TAESD's weights."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in unused_models(container):
        parent, _, name = dotted.rpartition(".")
        node = _select(container, parent)
        if isinstance(node, dict) and node.get(name) is not None:
            node[name] = None
    for key, node in find_pretrained_nodes(container):
        node["path"] = str(resolve_pretrained(node, key))
    return OmegaConf.create(container)


def unused_models(container: dict) -> list[str]:
    """Optional models this config declares but will not use: the generator's TAESD unless CLIP
    guidance decodes with it."""
    guidance = container.get("clip_guidance") or {}
    if guidance.get("scale") and guidance.get("decoder") == "taesd":
        return []
    return ["generator.taesd"]


def _select(container: Any, dotted: str) -> Any:
    node = container
    for name in dotted.split("."):
        node = node.get(name) if isinstance(node, dict) else None
    return node


# ---------------------------------------------------------------- configs that say `weights:`

KEY, OLD_KEY = "pretrained", "weights"
# The model classes whose file node presets and runs saved by genart 0.1 call `weights:`;
# tests/test_pretrained.py checks that conf/ uses exactly these.
MODEL_TARGETS = frozenset(
    {
        "genart.generators.pixels.PixelGenerator",
        "genart.generators.vqgan.VQGANGenerator",
        "genart.guides.CLIPModel",
    }
)
OLD_OVERRIDE = re.compile(r"^([+~]*(?:generator|guide\.models\.[^.=]+))\.weights(?=$|[.=])")


def upgrade_weights_key(cfg: Any, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Rename `weights:` to `pretrained:` in every genart model node, in place; the keys moved.

    `cfg` is a plain container or a DictConfig (struct mode is fine). A saved preset composes
    INTO the group's node, so both keys may be there: the saved `weights` value wins over the
    group's default, except where `overrides` (the command line's) typed into `pretrained`."""
    typed = [key_of(o) for o in overrides]
    return _upgrade(cfg, "", typed)


def moved_override(arg: str) -> str | None:
    """`generator.weights.path=/x` → `generator.pretrained.path=/x` (and guide.models.<name>.…);
    None when `arg` names no old `weights` key."""
    moved = OLD_OVERRIDE.sub(rf"\1.{KEY}", arg, count=1)
    return moved if moved != arg else None


def _upgrade(node: Any, prefix: str, typed: list[str]) -> list[str]:
    children = _children(node)
    moved = [
        k for name, child in children.items() for k in _upgrade(child, _join(prefix, name), typed)
    ]
    if OLD_KEY in children and children.get("_target_") in MODEL_TARGETS:
        here = _join(prefix, KEY)
        sub = [t[len(here) :].lstrip(".") for t in typed if t == here or t.startswith(f"{here}.")]
        _replace(node, _merged(children[OLD_KEY], children.get(KEY), sub))
        moved.append(_join(prefix, OLD_KEY))
    return moved


def _merged(old: Any, new: Any, typed: list[str]) -> Any:
    """The saved value, with the sub-keys the command line typed (`path`; "" = the whole node)."""
    if not typed:
        return old
    if "" in typed or not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return new
    firsts = {t.split(".")[0] for t in typed}
    return {**_plain(old), **{k: v for k, v in _plain(new).items() if k in firsts}}


def _replace(node: Any, value: Any) -> None:
    """node[KEY] = value, node[OLD_KEY] deleted; a struct DictConfig is opened for it."""
    from omegaconf import DictConfig, open_dict

    with open_dict(node) if isinstance(node, DictConfig) else nullcontext():
        node[KEY] = _plain(value)
        del node[OLD_KEY]


def _children(node: Any) -> dict:
    """{key or index: child} of a container, DictConfig interpolations left unresolved."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        return dict(node.items_ex(resolve=False))
    if isinstance(node, ListConfig):
        return {i: node[i] for i in range(len(node)) if not OmegaConf.is_interpolation(node, i)}
    if isinstance(node, Mapping):
        return dict(node.items())
    return dict(enumerate(node)) if isinstance(node, list | tuple) else {}


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


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
