"""Whole Hugging Face repo snapshots for `pretrained:` nodes, the folders diffusers'
`from_pretrained` loads: explicit path → the HF hub cache → one `snapshot_download` when online →
one paragraph that names the key to set."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# Weight files as diffusers and transformers name them; the middle holds variant and shard:
# model.fp16.safetensors, diffusion_pytorch_model-00001-of-00002.safetensors, model.fp16-00001-…
WEIGHTS = re.compile(
    r"(?:diffusion_pytorch_model|pytorch_model|model)"
    r"(?P<middle>(?:[.-][^.]+)*?)\.(?:safetensors|bin)"
)
SHARD = re.compile(r"-\d{5}-of-\d{5}")
CONFIGS = ("*.json", "*.txt")  # model_index, component configs, tokenizer vocab and merges
LORA = "*pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes
ANSWER_TIMEOUT = 5.0  # seconds for the Hub's first answer (the TCP probe already took ≤ 2 s)


def is_snapshot(spec: Mapping) -> bool:
    """A node that names a whole repo (hf_repo, no filename or url) rather than one file."""
    return bool(spec.get("hf_repo")) and not spec.get("filename") and not spec.get("url")


def resolve_snapshot(spec: Mapping, path_key: str) -> Path:
    """A loadable local folder for a snapshot node: path → HF cache → one download → a paragraph."""
    from genart.pretrained import PretrainedNotFound

    if spec.get("path"):
        return _explicit_dir(spec, path_key)
    folder, found = _cached(spec, path_key)
    if folder is None:
        folder, reason = _downloaded(spec)
    if folder is None:
        raise PretrainedNotFound(missing_message(spec, path_key, found, reason))
    return folder


def _cached(spec: Mapping, path_key: str) -> tuple[Path | None, str]:
    """(the cached folder if loadable, else None; what the cache held, for the message)."""
    from huggingface_hub.errors import HFValidationError

    from genart.pretrained import PretrainedNotFound

    try:
        folder = find_cached_snapshot(spec)
    except HFValidationError as err:
        raise PretrainedNotFound(
            f"{_node_key(path_key)}.hf_repo={spec['hf_repo']} is not a Hugging Face repo id "
            f"({_first_line(err)}). Set it to org/name, as in stabilityai/sdxl-turbo"
        ) from None
    if folder is None:
        return None, f"it is not in the Hugging Face cache (looked in {repo_cache(spec)})"
    gap = missing_parts(folder, spec.get("variant"))
    if gap is None:
        return folder, ""
    return None, f"the cached snapshot {folder} cannot be loaded: {gap}"


def _downloaded(spec: Mapping) -> tuple[Path | None, str]:
    """(the downloaded folder if loadable, else None; why not). Only after both probes say go."""
    from genart.pretrained import offline_reason

    reason = offline_reason(spec) or hub_refusal(spec)
    if reason:
        return None, reason
    try:
        folder = download_snapshot(spec)
    except Exception as err:  # one attempt only; any failure ends in the same advice
        return None, f"a download attempt failed ({type(err).__name__}: {_first_line(err)})"
    gap = missing_parts(folder, spec.get("variant"))
    if gap is None:
        return folder, ""
    return None, f"the downloaded snapshot {folder} cannot be loaded: {gap}"


def _explicit_dir(spec: Mapping, path_key: str) -> Path:
    """An explicit path must be a folder diffusers can load; say which setting named it if not."""
    from genart.pretrained import PretrainedNotFound

    folder = Path(spec["path"]).expanduser()
    if not folder.exists():
        problem = f"does not exist (looked for {folder.absolute()})"
    elif not folder.is_dir():
        problem = f"is a file, but {_node_key(path_key)} names a whole repo ({spec['hf_repo']})"
    else:
        problem = missing_parts(folder, spec.get("variant"))
        if problem is None:
            return folder
        problem = f"cannot be loaded: {problem}"
    raise PretrainedNotFound(
        f"{path_key}={spec['path']} {problem}. Set {path_key} to a local copy of the "
        f"{_what(spec)}, e.g. python -m genart {path_key}=/path/to/{_folder_name(spec)}"
    )


# ---------------------------------------------------------------- the cache and the download


def hub_cache() -> Path:
    """The HF hub cache, read now: HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's own."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache(spec: Mapping) -> Path:
    """Where the hub cache keeps this repo (models--org--name)."""
    return hub_cache() / f"models--{spec['hf_repo'].replace('/', '--')}"


def hub_refusal(spec: Mapping) -> str | None:
    """Why the Hub will not serve hf_repo@revision, or None. huggingface_hub's own calls have no
    read timeout (an endpoint that accepts and never answers hangs them), so ask first, bounded."""
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    revision = urllib.parse.quote(spec.get("revision") or "main", safe="")
    url = f"{endpoint}/api/models/{spec['hf_repo']}/revision/{revision}"
    answer = _ask(url)
    if answer == "json" or answer in (401, 403):  # gated or private: the hub's token may open it
        return None
    because = f"no download was attempted because {endpoint}"
    if isinstance(answer, int):
        return f"{because} answered HTTP {answer} for {spec['hf_repo']} (no such repo or revision?)"
    return f"{because} {answer}"


def _ask(url: str) -> int | str:
    """`json` for a JSON answer, an error's HTTP status, or what went wrong; in ANSWER_TIMEOUT s."""
    answer: list[int | str] = [f"did not answer within {ANSWER_TIMEOUT:g} s"]

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT) as response:
                is_json = "json" in response.headers.get("Content-Type", "")
                answer[0] = "json" if is_json else "answered with a page that is not the Hub's API"
        except urllib.error.HTTPError as err:
            answer[0] = err.code
        except (OSError, ValueError) as err:
            if not isinstance(getattr(err, "reason", err), TimeoutError):  # that one says no answer
                answer[0] = f"could not be asked ({type(err).__name__}: {_first_line(err)})"

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(ANSWER_TIMEOUT)
    return answer[0]


def find_cached_snapshot(spec: Mapping) -> Path | None:
    """The cached snapshot folder of hf_repo@revision (+ subfolder), maybe incomplete; offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            spec["hf_repo"],
            revision=spec.get("revision"),
            cache_dir=hub_cache(),
            allow_patterns=allow_patterns(spec),
            local_files_only=True,
        )
    except LocalEntryNotFoundError as err:
        # IncompleteSnapshotError (hub ≥ 2): its tree listing names files we may not need
        folder = getattr(err, "snapshot_path", None)
        if folder is None:
            return None
    return Path(folder) / (spec.get("subfolder") or "")


def download_snapshot(spec: Mapping) -> Path:
    """One `snapshot_download` of the files the node needs, into the HF hub cache."""
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the Hugging Face Hub", _what(spec))
    folder = snapshot_download(
        spec["hf_repo"],
        revision=spec.get("revision"),
        cache_dir=hub_cache(),
        allow_patterns=allow_patterns(spec),
        endpoint=os.environ.get("HF_ENDPOINT") or None,  # the host offline_reason probed
    )
    return Path(folder) / (spec.get("subfolder") or "")


def allow_patterns(spec: Mapping) -> list[str]:
    """The node's `allow_patterns`, else configs + safetensors of the variant (no .bin/.ckpt/onnx
    duplicates, nor the root single-file checkpoints: SDXL base's sd_xl_base_1.0.safetensors)."""
    if spec.get("allow_patterns"):
        return list(spec["allow_patterns"])
    variant = spec.get("variant")
    if variant:
        weights = [f"*.{variant}.safetensors", f"*.{variant}-?????-of-?????.safetensors"]
    else:  # plain weights only (a LoRA has no variants)
        weights = ["*model.safetensors", "*model-?????-of-?????.safetensors", LORA]
    prefix = f"{spec['subfolder'].strip('/')}/" if spec.get("subfolder") else ""
    return [prefix + p for p in (*CONFIGS, *weights)]


# ---------------------------------------------------------------- is it loadable?


def missing_parts(folder: Path, variant: str | None) -> str | None:
    """What keeps diffusers from loading `folder` with `variant`, or None when nothing does."""
    if not folder.is_dir():
        return f"there is no folder {folder}"
    index = folder / "model_index.json"
    if index.is_file():
        try:
            components = _components(index)
        except (ValueError, OSError) as err:
            return f"its model_index.json is unreadable ({type(err).__name__}: {_first_line(err)})"
        return _pipeline_gap(folder, components, variant)
    if (folder / "config.json").is_file():
        return _model_gap(folder, variant, "")
    if any(f.is_file() for f in folder.glob("*.safetensors")):
        return None  # plain weights, e.g. a LoRA
    return "it holds no model_index.json, config.json or .safetensors file"


def _components(index: Path) -> list[str]:
    """The component folders model_index.json names (["diffusers", "UNet2DConditionModel"], …)."""
    entries = json.loads(index.read_text())
    if not isinstance(entries, dict):
        raise ValueError("not a JSON object")
    return [
        name
        for name, value in entries.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
    ]


def _pipeline_gap(folder: Path, components: list[str], variant: str | None) -> str | None:
    """A pipeline loads when every model component has weights; diffusers takes the variant where a
    component has it and its plain weights elsewhere, but refuses a variant no component has."""
    for name in components:
        if not (folder / name).is_dir():
            return f"it has no {name}/ folder"
        gap = _model_gap(folder / name, variant, f"{name}/")
        if gap:
            return gap
    models = [folder / n for n in components if (folder / n / "config.json").is_file()]
    if variant and not any(variant in weight_variants(m) for m in models):
        return f"no component holds {variant} weights (e.g. unet/*.{variant}.safetensors)"
    return None


def _model_gap(folder: Path, variant: str | None, label: str) -> str | None:
    """A model folder (config.json) needs weights of the variant or plain ones; others need none."""
    if not (folder / "config.json").is_file():
        return None if any(folder.glob("*.json")) else f"{label or 'the folder'} holds no config"
    held = weight_variants(folder)
    if {variant or "", ""} & held:
        return None
    want = f"{variant} weights" if variant else "weights without a variant"
    others = f" (it holds: {', '.join(sorted(v or 'no variant' for v in held))})" if held else ""
    return f"{label or 'the folder'} holds no {want}{others}"


def weight_variants(folder: Path) -> set[str]:
    """The variants of a folder's model weight files ("" = plain); dangling links don't count."""
    found = set()
    for file in folder.iterdir():
        match = WEIGHTS.fullmatch(file.name)
        if match and file.is_file():
            found.add(SHARD.sub("", match["middle"]).lstrip("."))
    return found


# ---------------------------------------------------------------- the paragraph


def missing_message(spec: Mapping, path_key: str, found: str, reason: str) -> str:
    """One paragraph: what is missing, where genart looked, why no download, what to set."""
    includes = " ".join(f"--include '{p}'" for p in allow_patterns(spec))
    revision = f" --revision {spec['revision']}" if spec.get("revision") else ""
    local = f"/path/to/{Path(spec['hf_repo']).name}"
    return (
        f"Pretrained {_what(spec)} not found: {path_key} is not set, {found}, and {reason}. "
        f"Fetch it where there is network (hf download {spec['hf_repo']}{revision} {includes} "
        f"--local-dir {local}), copy that folder here and point {path_key} at it: "
        f"python -m genart {path_key}=/path/to/{_folder_name(spec)}"
    )


def _what(spec: Mapping) -> str:
    """`Hugging Face repo org/name (revision main, variant fp16, subfolder vae)`."""
    parts = [f"revision {spec.get('revision') or 'main'}"]
    parts += [f"{k} {spec[k]}" for k in ("variant", "subfolder") if spec.get(k)]
    return f"Hugging Face repo {spec['hf_repo']} ({', '.join(parts)})"


def _folder_name(spec: Mapping) -> str:
    """The folder the path key should name: the repo's, or its subfolder inside it."""
    sub = (spec.get("subfolder") or "").strip("/")
    return "/".join(p for p in (Path(spec["hf_repo"]).name, sub) if p)


def _node_key(path_key: str) -> str:
    return path_key.removesuffix(".path")


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "no message")
