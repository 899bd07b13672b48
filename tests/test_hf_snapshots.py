"""Whole-repo `pretrained:` nodes (genart.hf_snapshots): explicit folder → HF hub cache → one
download → one paragraph, against a fake hub cache in the real on-disk layout."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from safetensors.numpy import save as safetensors_bytes

from genart import hf_snapshots as S
from genart import pretrained as W
from genart.errors import UserError

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
KEY = "generator.pretrained"
OLD, NEW = "a" * 40, "b" * 40  # commit hashes (the hub cache names snapshots by 40 hex digits)
MODELS = {  # component → weight file stem, as diffusers and transformers save them
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0",
    "force_zeros_for_empty_prompt": True,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def sdxl_files(*variants: str | None) -> list[str]:
    """An SDXL pipeline's files with the weights of each variant (None = plain weights)."""
    files = ["model_index.json", "scheduler/scheduler_config.json"]
    for tok in ("tokenizer", "tokenizer_2"):
        files += [f"{tok}/vocab.json", f"{tok}/merges.txt", f"{tok}/tokenizer_config.json"]
    for model, stem in MODELS.items():
        files.append(f"{model}/config.json")
        files += [f"{model}/{stem}{f'.{v}' if v else ''}.safetensors" for v in variants]
    return files


def content(name: str) -> bytes:
    """Real bytes for a file name: safetensors for weights, JSON for configs."""
    if name.endswith(".safetensors"):
        return safetensors_bytes({"weight": np.full((2, 2), len(name), dtype=np.float32)})
    if name.endswith("model_index.json"):
        return json.dumps(MODEL_INDEX).encode()
    return b'{"name": "%s"}' % name.encode() if name.endswith(".json") else b"#version: 0.2\n"


def cache_snapshot(hub: Path, repo: str, commit: str, files: list[str], ref: str | None = "main"):
    """Write files as huggingface_hub caches them: blobs/<sha256>, snapshots/<commit>/<file> → blob
    symlinks, refs/<ref> holding the commit. Returns the snapshot folder."""
    root = hub / f"models--{repo.replace('/', '--')}"
    for name in files:
        data = content(name)
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return root / "snapshots" / commit


def local_copy(folder: Path, files: list[str]) -> Path:
    """A plain folder as `hf download --local-dir` writes it."""
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content(name))
    return folder


def node(**keys) -> dict:
    """The node the sdxl generator configs carry."""
    return {
        "path": None,
        "hf_repo": SDXL,
        "revision": None,
        "variant": "fp16",
        "subfolder": None,
        **keys,
    }


PROBE = W.is_reachable  # the real 2 s probe, before any test replaces it


def no_network(*args, **kwargs):
    raise AssertionError("the resolver must not touch the network here")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty HF hub cache named by HF_HUB_CACHE; online flags cleared, network forbidden."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in (*W.OFFLINE_ENV, "HF_HOME", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(W, "is_reachable", no_network)
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def offline(monkeypatch) -> None:
    monkeypatch.setenv("GENART_OFFLINE", "1")


def online(monkeypatch, fake) -> None:
    """Both probes say online; `snapshot_download` writes through `fake`; cache look-ups stay."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def snapshot_download(repo_id, **kwargs):
        return (
            real(repo_id, **kwargs) if kwargs.get("local_files_only") else fake(repo_id, **kwargs)
        )

    monkeypatch.setattr(W, "is_reachable", lambda host, port: True)
    monkeypatch.setattr(S, "hub_refusal", lambda spec: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def resolve(spec: dict) -> Path:
    return W.resolve_pretrained(spec, KEY)


def refusal(spec: dict) -> str:
    with pytest.raises(W.PretrainedNotFound) as err:
        resolve(spec)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    return str(err.value)


def refusal_within(spec: dict, seconds: float) -> str:
    """The refusal, due within `seconds` (a never-hangs guard, not a benchmark). The resolver runs
    in a daemon thread, so a hang fails this test instead of freezing the suite."""
    outcome: list = []

    def attempt() -> None:
        try:
            outcome.append(resolve(spec))
        except BaseException as err:
            outcome.append(err)

    start = time.perf_counter()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"no answer within {seconds:g} s: the resolver hangs"
    assert isinstance(outcome[0], W.PretrainedNotFound), outcome[0]
    print(f"refused in {time.perf_counter() - start:.2f} s")
    assert "\n" not in str(outcome[0])
    return str(outcome[0])


# ---------------------------------------------------------------- the HF cache


def test_found_in_cache_without_network(hub):
    snapshot = cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    assert resolve(node()) == snapshot.resolve()


def test_pinned_revision_picks_its_snapshot(hub, monkeypatch):
    old = cache_snapshot(hub, SDXL, OLD, sdxl_files("fp16"), ref="v1.0")
    new = cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    assert resolve(node()) == new.resolve()
    assert resolve(node(revision=OLD)) == old.resolve()
    assert resolve(node(revision="v1.0")) == old.resolve()
    offline(monkeypatch)
    assert "revision v2.0" in refusal(node(revision="v2.0"))


@pytest.mark.parametrize(
    "cached, variant, expected",
    [
        (["fp16"], "fp16", None),
        ([None], None, None),
        ([None, "fp16"], None, None),
        (["fp16"], None, "text_encoder/ holds no weights without a variant (it holds: fp16)"),
        ([None], "fp16", "no component holds fp16 weights"),
        (["bf16"], "fp16", "text_encoder/ holds no fp16 weights (it holds: bf16)"),
    ],
    ids=["fp16", "plain", "plain-among-both", "plain-missing", "fp16-missing", "only-bf16"],
)
def test_variant_in_cache(hub, monkeypatch, cached, variant, expected):
    snapshot = cache_snapshot(hub, SDXL, NEW, sdxl_files(*cached))
    offline(monkeypatch)
    if expected is None:
        assert resolve(node(variant=variant)) == snapshot.resolve()
    else:
        message = refusal(node(variant=variant))
        assert f"the cached snapshot {snapshot.resolve()} cannot be loaded: {expected}" in message


def test_a_component_without_the_variant_falls_back_as_diffusers_does(hub):
    files = [f for f in sdxl_files("fp16") if not f.startswith("text_encoder/model")]
    snapshot = cache_snapshot(hub, SDXL, NEW, [*files, "text_encoder/model.safetensors"])
    assert resolve(node()) == snapshot.resolve()


def test_an_interrupted_download_is_not_loadable(hub, monkeypatch):
    snapshot = cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    (snapshot / "unet/diffusion_pytorch_model.fp16.safetensors").resolve().unlink()  # blob gone
    offline(monkeypatch)
    assert "cannot be loaded: unet/ holds no fp16 weights" in refusal(node())


def test_missing_component_is_named(hub, monkeypatch):
    files = [f for f in sdxl_files("fp16") if not f.startswith("vae/")]
    cache_snapshot(hub, SDXL, NEW, files)
    offline(monkeypatch)
    assert "it has no vae/ folder" in refusal(node())


def test_hf_home_is_honoured(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = cache_snapshot(tmp_path / "home" / "hub", SDXL, NEW, sdxl_files("fp16"))
    assert resolve(node()) == snapshot.resolve()


def test_subfolder(hub, monkeypatch):
    snapshot = cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    assert resolve(node(subfolder="vae")) == (snapshot / "vae").resolve()
    offline(monkeypatch)
    message = refusal(node(subfolder="no_such"))
    assert f"there is no folder {(snapshot / 'no_such').resolve()}" in message
    assert f"python -m genart {KEY}.path=/path/to/stable-diffusion-xl-base-1.0/no_such" in message


def test_a_single_model_repo_and_a_lora(hub):
    vae = cache_snapshot(
        hub, "org/vae", NEW, ["config.json", "diffusion_pytorch_model.safetensors"]
    )
    lora = cache_snapshot(hub, "org/lora", NEW, ["pytorch_lora_weights.safetensors"])
    assert resolve(node(hf_repo="org/vae", variant=None)) == vae.resolve()
    assert resolve(node(hf_repo="org/lora", variant=None)) == lora.resolve()


# ---------------------------------------------------------------- an explicit path


def test_explicit_folder_wins_without_network(hub, tmp_path):
    cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    mine = local_copy(tmp_path / "sdxl", sdxl_files("fp16"))
    assert resolve(node(path=str(mine))) == mine


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: local_copy(tmp, ["weights.safetensors"]) / "weights.safetensors", "is a file"),
        (
            lambda tmp: local_copy(tmp, sdxl_files(None)),
            "cannot be loaded: no component holds fp16",
        ),
        (lambda tmp: local_copy(tmp, []), "cannot be loaded: it holds no model_index.json"),
    ],
    ids=["missing", "a-file", "no-variant", "empty"],
)
def test_explicit_path_problems_name_the_key(hub, tmp_path, make, expected):
    path = make(tmp_path)
    message = refusal(node(path=str(path)))
    assert message.startswith(f"{KEY}.path={path} {expected}")
    assert f"python -m genart {KEY}.path=/path/to/stable-diffusion-xl-base-1.0" in message


# ---------------------------------------------------------------- offline: one paragraph, fast


@pytest.mark.parametrize("flag", W.OFFLINE_ENV)
def test_offline_is_one_paragraph_naming_repo_and_key(hub, monkeypatch, flag):
    monkeypatch.setenv(flag, "1")
    message = refusal_within(node(), seconds=10)
    assert f"Pretrained Hugging Face repo {SDXL} (revision main, variant fp16) not found" in message
    assert f"it is not in the Hugging Face cache (looked in {hub}/models--stabilityai--" in message
    assert f"because {flag}=1" in message
    assert f"hf download {SDXL} --include '*.json'" in message
    assert "--include '*.fp16.safetensors'" in message
    assert f"python -m genart {KEY}.path=/path/to/stable-diffusion-xl-base-1.0" in message


@pytest.mark.parametrize(
    "endpoint",
    ["http://10.255.255.1:9", "http://127.0.0.1:{closed}", "http://127.0.0.1:{silent}"],
    ids=["blackhole", "refused", "accepts-never-answers"],
)
def test_an_endpoint_that_does_not_serve_ends_fast_with_the_paragraph(
    hub, monkeypatch, endpoint, silent_port
):
    """10.255.255.1 drops packets on most networks (the TCP probe times out; a sandbox that
    intercepts connections answers instead); a server that accepts and never answers would hang
    huggingface_hub forever (its API calls have no read timeout)."""
    monkeypatch.setattr(W, "is_reachable", PROBE)
    monkeypatch.setenv("HF_ENDPOINT", endpoint.format(closed=closed_port(), silent=silent_port))
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    message = refusal_within(node(), seconds=W.PROBE_TIMEOUT + S.ANSWER_TIMEOUT + 3)
    assert SDXL in message and f"python -m genart {KEY}.path=" in message
    assert "no download was attempted because" in message
    if "{silent}" in endpoint:
        assert f"did not answer within {S.ANSWER_TIMEOUT:g} s" in message


def closed_port() -> int:
    """A local port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A local server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_a_read_timeout_is_no_answer(monkeypatch, silent_port):
    """urlopen's own timeout may fire just before the thread's bound: same answer, no race."""
    import urllib.request

    urlopen = urllib.request.urlopen
    monkeypatch.setattr(S, "ANSWER_TIMEOUT", 1.0)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: urlopen(url, timeout=0.3))
    assert S._ask(f"http://127.0.0.1:{silent_port}/api") == "did not answer within 1 s"


class Hub(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status and content type the test sets."""

    status, content_type = 200, "application/json"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "status, content_type, expected",
    [
        (200, "application/json", None),
        (401, "application/json", None),  # gated: huggingface_hub's token may open it
        (404, "application/json", "answered HTTP 404 for org/model (no such repo or revision?)"),
        (200, "text/html", "answered with a page that is not the Hub's API"),
    ],
    ids=["json", "gated", "404", "captive-portal"],
)
def test_hub_refusal_reads_the_answer(monkeypatch, status, content_type, expected):
    handler = type("Handler", (Hub,), {"status": status, "content_type": content_type})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.delenv("http_proxy", raising=False)
        reason = S.hub_refusal({"hf_repo": "org/model", "revision": None})
    finally:
        server.shutdown()
    assert reason is None if expected is None else expected in reason


def test_not_a_repo_id(hub, monkeypatch):
    offline(monkeypatch)
    assert f"{KEY}.hf_repo=a/b/c is not a Hugging Face repo id" in refusal(node(hf_repo="a/b/c"))


# ---------------------------------------------------------------- one download when online


def test_download_when_online_asks_for_the_variant_only(hub, monkeypatch):
    calls = []

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(cache_snapshot(Path(kwargs["cache_dir"]), repo_id, OLD, sdxl_files("fp16")))

    online(monkeypatch, fake)
    assert resolve(node(revision=OLD)) == (
        hub / f"models--stabilityai--{SDXL.split('/')[1]}" / "snapshots" / OLD
    )
    ((repo, kwargs),) = calls
    assert repo == SDXL and kwargs["revision"] == OLD and Path(kwargs["cache_dir"]) == hub
    patterns = kwargs["allow_patterns"]
    assert {"*.json", "*.txt", "*.fp16.safetensors"} <= set(patterns)
    assert "*model.safetensors" not in patterns  # the fp32 duplicates stay on the Hub


def test_an_incomplete_cache_is_completed_by_the_download(hub, monkeypatch):
    cache_snapshot(hub, SDXL, NEW, sdxl_files(None))
    fake = lambda repo_id, **kw: str(cache_snapshot(hub, repo_id, NEW, sdxl_files(None, "fp16")))
    online(monkeypatch, fake)
    assert resolve(node()) == (
        hub / "models--stabilityai--stable-diffusion-xl-base-1.0/snapshots" / NEW
    )


def failing_download(repo_id, **kwargs):
    raise OSError("HTTP 503")


def plain_download(repo_id, **kwargs):
    return str(cache_snapshot(Path(kwargs["cache_dir"]), repo_id, NEW, sdxl_files(None)))


@pytest.mark.parametrize(
    "fake, expected",
    [
        (failing_download, "a download attempt failed (OSError: HTTP 503)"),
        (plain_download, "cannot be loaded: no component holds fp16"),
    ],
    ids=["fails", "lacks-the-variant"],
)
def test_a_failed_download_ends_in_the_paragraph(hub, monkeypatch, fake, expected):
    online(monkeypatch, fake)
    message = refusal(node())
    assert expected in message and f"python -m genart {KEY}.path=" in message


# ---------------------------------------------------------------- what a download fetches


SDXL_TREE = [  # the kinds of files SDXL base's repo holds beside the diffusers folders
    "README.md",
    "01.png",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors",
    "sd_xl_offset_example-lora_1.0.safetensors",
    "text_encoder/model.onnx",
    "text_encoder/openvino_model.bin",
    "text_encoder/flax_model.msgpack",
    "unet/diffusion_pytorch_model.onnx",
    "unet/model.onnx_data",
    "unet/diffusion_flax_model.msgpack",
    "vae_decoder/model.onnx",
    *sdxl_files(None, "fp16"),
]


@pytest.mark.parametrize("variant", ["fp16", None])
def test_allow_patterns_fetch_a_loadable_pipeline_and_nothing_else(tmp_path, variant):
    from huggingface_hub.utils import filter_repo_objects

    fetched = list(
        filter_repo_objects(SDXL_TREE, allow_patterns=S.allow_patterns(node(variant=variant)))
    )
    assert sorted(fetched) == sorted(sdxl_files(variant))
    assert S.missing_parts(local_copy(tmp_path, fetched), variant) is None


def test_allow_patterns_of_a_subfolder_and_given_ones():
    assert S.allow_patterns(node(subfolder="vae")) == [f"vae/{p}" for p in S.allow_patterns(node())]
    assert S.allow_patterns(node(allow_patterns=["unet/*"])) == ["unet/*"]


# ---------------------------------------------------------------- through the config


def test_resolve_all_pretrained_points_the_node_at_the_folder(hub):
    snapshot = cache_snapshot(hub, SDXL, NEW, sdxl_files("fp16"))
    cfg = OmegaConf.create({"generator": {"_target_": "x.SDXL", "pretrained": node()}, "steps": 4})
    resolved = W.resolve_all_pretrained(cfg)
    assert resolved.generator.pretrained.path == str(snapshot.resolve())
    assert resolved.generator.pretrained.variant == "fp16" and resolved.steps == 4
    assert W.resolve_all_pretrained(resolved) == resolved  # a resolved config resolves to itself


def test_import_loads_no_heavy_library():
    code = (
        "import sys, genart.pretrained, genart.hf_snapshots; print(sorted(m for m in "
        "('torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'huggingface_hub') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
