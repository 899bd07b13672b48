"""Where and how a run computes: device choice, seeding, RNG state capture, threads, provenance."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from genart.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """auto → cuda → mps → cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"device={name} is not a device name torch knows. Use device=auto (cuda → mps → cpu), "
            "device=cpu, device=cuda (or cuda:1 for the second GPU) or device=mps."
        ) from None
    if not device_available(device):
        what = device if device.index is not None else device.type.upper()
        raise UserError(
            f"device={name} was asked for, but this machine has no {what} device "
            "that torch can use. Use device=auto (cuda → mps → cpu) or device=cpu."
        )
    return device


def device_available(device: torch.device) -> bool:
    """cpu always; cuda, mps, xpu, … if torch's backend for it is built and sees a device."""
    if device.type == "cpu":
        return True
    if device.type == "mps":
        return torch.backends.mps.is_available()
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, …; none for meta, xla
    if not getattr(backend, "is_available", lambda: False)():
        return False
    count = getattr(backend, "device_count", lambda: 1)()
    return device.index is None or device.index < count


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random; kornia augmentations draw from torch's RNG."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    """Apply the configured CPU thread count (None keeps torch's default); returns the count used."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def keep_freed_memory() -> bool:
    """glibc only: serve blocks up to 32 MB from the heap and keep freed memory for reuse.

    glibc's default maps large blocks afresh and unmaps them on free, so every step's
    activations fault their pages in again (zeroed by the kernel): ~8 % of a 256² VQGAN+CLIP
    step on 2 CPU threads (median 2.65 → 2.42 s, the two settings interleaved in one process).
    Computes the same numbers. Other allocators (macOS, Windows, jemalloc or tcmalloc preloaded)
    are left as they are; returns whether glibc took the settings.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    trim, top_pad, mmap_threshold = -1, -2, -3  # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    settings = ((mmap_threshold, 32 << 20), (trim, 1 << 30), (top_pad, 64 << 20))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def rng_state() -> dict:
    """All RNG states, as tensors and plain Python values so `torch.load(weights_only=True)` reads them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [
        name,
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(gauss),
    ]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_as_tuples(state["random"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the nested tuples that a round trip through torch.save may turn into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def git_commit(path: Path | None = None) -> str:
    """The genart checkout's commit, or "unknown" outside a git checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, precision: str, threads: int) -> dict:
    """What decides the exact pixels of a run: recorded in result.json and in saved presets.

    `cpu_bf16` is the CPU's bf16 capability (its units, and an ISA limit that held them back),
    which decides what `precision=auto` became on CPU; `kernels` the kernel and layout of each
    part of the step (genart.speed.kernels' rule for this CPU kind and precision).
    """
    import genart
    from genart.speed.kernels import kernel_plan
    from genart.speed.precision import cpu_bf16, dtype_of

    return {
        "device": str(device),
        "precision": precision,
        "cpu_bf16": cpu_bf16(),
        "kernels": kernel_plan(device, dtype_of(precision)).as_dict(),
        "threads": threads,
        "torch": torch.__version__,
        "genart": genart.__version__,
        "git_commit": git_commit(),
        "hostname": os.uname().nodename if hasattr(os, "uname") else "",
    }
