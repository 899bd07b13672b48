"""Images per minute of a real genart sweep, models built for every job (`cache_models=false`)
against built once per worker process (`cache_models=true`), with 1 worker (the basic launcher)
and 2 (`hydra/launcher=joblib_safe hydra.launcher.n_jobs=2`).

`python -m genart.tools.throughput [--only vqgan_tiny] [--workers 1] [--jobs N] [--repeats R]`
runs each cell as `python -m genart <overrides> seed=range(0,N) -m` in a subprocess and times the
whole command (interpreter and Hydra start-up included; `sweep_s` starts at Hydra's "Launching"
line instead). The two arms of a row take turns, their order flipped every repeat, so a machine
that speeds up or slows down does so for both alike. `vqgan` loads the real VQGAN f16-16384 and
CLIP ViT-B/32 architectures from disk: random weights in the real file formats
(genart.tools.random_weights), written once to --weights-dir. docs/throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from genart.tools.bench import cpu_name, write_report


@dataclass
class Model:
    overrides: list[str]
    jobs: int  # images per sweep: sized so a cell takes well under a minute to ~2 min on 2 cores
    real_weights: bool = False  # needs the random real-architecture files (pretrained.path=…)
    note: str = field(default="")


MODELS = {
    "vqgan_tiny": Model(
        ["generator=vqgan_tiny", "guide=clip_tiny", "size=[64,64]", "steps=3", "cutouts.cutn=4"],
        jobs=6,
    ),
    "vqgan": Model(
        ["generator=vqgan", "guide=clip_vitb32", "size=[128,128]", "steps=2", "cutouts.cutn=4"],
        jobs=4,
        real_weights=True,
        note="VQGAN f16-16384 + CLIP ViT-B/32, random weights loaded from disk",
    ),
    "sdxl_tiny": Model(
        ["generator=sdxl_tiny", "guide=clip_tiny", "size=[64,64]", "generator.sampler.steps=2"],
        jobs=4,
    ),
}
COMMON = ["logger=none"]  # no W&B: its service start-up would swamp a tiny job
LAUNCHERS = {1: [], 2: ["hydra/launcher=joblib_safe", "hydra.launcher.n_jobs=2"]}
ARMS = {"per_job": "false", "cached": "true"}  # cache_models=…
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16")
LAUNCHING = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[HYDRA\] Launching", re.M)


class SweepFailed(RuntimeError):
    """A timed sweep did not end with every job done."""


# -- the cells --------------------------------------------------------------------------------
def has_cache_switch() -> bool:
    """Does genart's root config have the top-level `cache_models` key?"""
    from omegaconf import OmegaConf

    return "cache_models" in OmegaConf.load(str(files("conf") / "config.yaml"))


def sweep_command(model: str, workers: int, arm: str | None, jobs: int, out: Path, weights: dict):
    """`python -m genart … -m` for one cell; arm None passes no cache_models (key missing)."""
    overrides = [*MODELS[model].overrides, *COMMON, *LAUNCHERS[workers]]
    if MODELS[model].real_weights:
        overrides += [
            f"generator.pretrained.path={weights['vqgan']}",
            f"guide.models.vitb32.pretrained.path={weights['clip']}",
        ]
    if arm is not None:
        overrides.append(f"cache_models={ARMS[arm]}")
    overrides += [f"seed=range(0,{jobs})", f"hydra.sweep.dir={out}"]
    return [sys.executable, "-m", "genart", *overrides, "-m"]


def plan(models: list[str], workers: list[int], arms: list[str], repeats: int) -> list[dict]:
    """Every timed sweep in running order: per row, the arms alternate, order flipped each repeat."""
    cells = []
    for repeat in range(repeats):
        order = arms if repeat % 2 == 0 else arms[::-1]
        for model in models:
            for n in workers:
                cells += [{"model": model, "workers": n, "arm": a, "repeat": repeat} for a in order]
    return cells


# -- timing one sweep -------------------------------------------------------------------------
def run_sweep(cmd: list[str], out: Path, jobs: int, timeout: float) -> dict:
    """Wall seconds of the whole command, and from Hydra's "Launching" line to its end."""
    env = {**os.environ, "GENART_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    load = os.getloadavg()[0]
    start_wall, start = time.time(), time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    done = jobs_done(out)
    if proc.returncode != 0 or done != jobs:
        tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).replace("\r", "\n")
        raise SweepFailed(
            f"{done}/{jobs} jobs done, exit {proc.returncode}: {' '.join(cmd)}\n{tail}"
        )
    startup = launch_offset(proc.stdout + proc.stderr, start_wall)
    return {
        "seconds": round(seconds, 3),
        "startup_s": None if startup is None else round(startup, 3),
        "sweep_s": None if startup is None else round(seconds - startup, 3),
        "load_avg_before": round(load, 2),
    }


def jobs_done(out: Path) -> int:
    """Jobs whose result.json says ok (the sweep summary's own record)."""
    return sum(json.loads(p.read_text()).get("status") == "ok" for p in out.glob("*/result.json"))


def launch_offset(output: str, start_wall: float) -> float | None:
    """Seconds from the command's start to Hydra's "Launching N jobs" log line (ms stamps)."""
    found = LAUNCHING.search(output)
    if found is None:
        return None
    stamp = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp() - start_wall  # both local wall-clock time


# -- the report -------------------------------------------------------------------------------
def per_minute(jobs: int, seconds: list[float | None]) -> float | None:
    """Images per minute from the median of the repeats' seconds."""
    known = [s for s in seconds if s]
    return round(jobs * 60 / statistics.median(known), 3) if known else None


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    """One row per (model, workers): images/min of each arm, whole command and sweep only."""
    rows = {}
    for r in runs:
        row = rows.setdefault(
            (r["model"], r["workers"]), {"model": r["model"], "workers": r["workers"]}
        )
        row.setdefault("raw", {}).setdefault(r["arm"], []).append(r)
    for row in rows.values():
        for arm in arms:
            done = row["raw"].get(arm, [])
            jobs = done[0]["jobs"] if done else 0
            row[arm] = {
                "jobs": jobs,
                "seconds": [d["seconds"] for d in done],
                "images_per_min": per_minute(jobs, [d["seconds"] for d in done]),
                "images_per_min_sweep": per_minute(jobs, [d["sweep_s"] for d in done]),
            }
        del row["raw"]
        row["ratio"] = ratio(row, "images_per_min")
        row["ratio_sweep"] = ratio(row, "images_per_min_sweep")
    return list(rows.values())


def ratio(row: dict, key: str) -> float | None:
    """cached / per-job images per minute; None when an arm is missing."""
    cached, per_job = (row.get(a, {}).get(key) for a in ("cached", "per_job"))
    return round(cached / per_job, 3) if cached and per_job else None


def format_table(report: dict) -> str:
    """The rows as markdown: images/min per arm (sweep-only in brackets) and the ratio."""
    lines = [
        f"cpu: {report['cpu']['name']}, torch {report['torch']}, {report['date']}",
        "",
        "| model | workers | jobs | per-job img/min | cached img/min | cached / per-job |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cells = [_rate(row.get(arm, {})) for arm in ("per_job", "cached")]
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        if row["ratio_sweep"] is not None:
            ratio += f" ({row['ratio_sweep']:.2f}x)"
        jobs = row.get("per_job", row.get("cached", {})).get("jobs", "")
        lines.append(
            f"| {row['model']} | {row['workers']} | {jobs} | {cells[0]} | {cells[1]} | {ratio} |"
        )
    lines += [
        "",
        "img/min = jobs × 60 / median wall seconds of the whole command "
        "(in brackets: from Hydra's 'Launching' line, start-up excluded)",
    ]
    return "\n".join(lines)


def _rate(arm: dict) -> str:
    if not arm.get("images_per_min"):
        return "not run"
    sweep = arm.get("images_per_min_sweep")
    return f"{arm['images_per_min']:.1f}" + (f" ({sweep:.1f})" if sweep else "")


def cpu_info() -> dict:
    """The CPU's name, the vector/matrix flags that decide genart's kernels, its bf16 verdict."""
    from genart.speed.precision import _proc_cpu_flags, cpu_bf16

    flags = _proc_cpu_flags()
    return {
        "name": cpu_name(),
        "cores": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "bf16": cpu_bf16(),
    }


def uncommitted() -> list[str]:
    """Changed or new files under genart/, conf/ and hydra_plugins/ (git status), or []."""
    root = Path(__file__).resolve().parents[2]
    cmd = ["git", "status", "--porcelain", "--", "genart", "conf", "hydra_plugins"]
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines()]


def cpu_slug(name: str) -> str:
    """'AMD EPYC' → 'amd_epyc': the report's file name part."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "cpu"


# -- main -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m genart.tools.throughput", description=__doc__)
    ap.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--workers", nargs="+", type=int, choices=list(LAUNCHERS), default=[1, 2])
    ap.add_argument("--jobs", type=int, help="images per sweep (default: per model, MODELS)")
    ap.add_argument("--repeats", type=int, default=2, help="timed sweeps per cell and arm")
    ap.add_argument(
        "--allow-missing-cache",
        action="store_true",
        help="without conf/config.yaml's cache_models key, time per-job loading only",
    )
    ap.add_argument(
        "--weights-dir",
        default=None,
        help="where the random real-architecture files go (default: $GENART_CACHE/throughput)",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start a repeat only if it ends within this many minutes (as long as the first)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds one sweep may take")
    ap.add_argument(
        "--json", default=None, help="report path (default: outputs/throughput_<cpu>_<date>.json)"
    )
    return ap.parse_args(argv)


def weights_for(models: list[str], folder: str | None) -> dict:
    """The real-architecture files when a model needs them (written on first use)."""
    if not any(MODELS[m].real_weights for m in models):
        return {}
    from genart.pretrained import cache_dir
    from genart.tools.random_weights import ensure_real_weights

    return {
        k: str(v)
        for k, v in ensure_real_weights(Path(folder or cache_dir() / "throughput")).items()
    }


def arms_or_exit(allow_missing: bool) -> list[str]:
    if has_cache_switch():
        return list(ARMS)
    if not allow_missing:
        raise SystemExit(
            "genart.tools.throughput: conf/config.yaml has no top-level cache_models key, so the "
            "cached arm cannot run. Run it where the model cache exists, or pass "
            "--allow-missing-cache to time per-job loading alone."
        )
    return ["per_job"]


def throughput(args: argparse.Namespace) -> dict:
    """Every timed sweep, in plan order; the report as written to JSON."""
    import torch

    from genart.runtime import git_commit

    arms = arms_or_exit(args.allow_missing_cache)
    weights = weights_for(args.only, args.weights_dir)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "uncommitted": uncommitted(),  # the timed code may be work in progress in this checkout
        "cache_models_key": arms == list(ARMS),
        "settings": {
            "models": {m: MODELS[m].overrides for m in args.only},
            "common": COMMON,
            "launchers": {str(k): LAUNCHERS[k] for k in args.workers},
            "repeats": args.repeats,
            "max_minutes": args.max_minutes,
        },
        "load_avg_start": list(os.getloadavg()),
        "runs": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genart-throughput-") as tmp:
        for i, cell in enumerate(plan(args.only, args.workers, arms, args.repeats)):
            new_repeat = i > 0 and cell["repeat"] != report["runs"][-1]["repeat"]
            if new_repeat and not fits_another(report["runs"], started, args.max_minutes):
                print(f"--max-minutes {args.max_minutes}: stopped after {cell['repeat']} repeat(s)")
                break
            jobs = args.jobs or MODELS[cell["model"]].jobs
            out = Path(tmp) / f"{i:02d}-{cell['model']}-w{cell['workers']}-{cell['arm']}"
            arm = cell["arm"] if report["cache_models_key"] else None
            cmd = sweep_command(cell["model"], cell["workers"], arm, jobs, out, weights)
            run = {**cell, "jobs": jobs, **run_sweep(cmd, out, jobs, args.timeout)}
            print(
                f"{cell['model']} workers={cell['workers']} {cell['arm']}: {run['seconds']:.1f} s "
                f"for {jobs} images",
                flush=True,
            )
            report["runs"].append(run)
            shutil.rmtree(out, ignore_errors=True)  # frames, videos, checkpoints of every job
    report["repeats_done"] = 1 + max(r["repeat"] for r in report["runs"])
    report["rows"] = summarise(report["runs"], arms)
    report["load_avg_end"] = list(os.getloadavg())
    return report


def fits_another(runs: list[dict], started: float, max_minutes: float | None) -> bool:
    """Would one more repeat, as long as the first, end within the budget?"""
    if max_minutes is None:
        return True
    first = sum(r["seconds"] for r in runs if r["repeat"] == 0)
    return time.perf_counter() - started + first <= max_minutes * 60


def main(argv=None) -> None:
    args = parse_args(argv)
    report = throughput(args)
    print(format_table(report))
    day = report["date"][:10]
    write_report(
        report, args.json or f"outputs/throughput_{cpu_slug(report['cpu']['name'])}_{day}.json"
    )


if __name__ == "__main__":
    main()
