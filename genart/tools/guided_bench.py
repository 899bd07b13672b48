"""Seconds per CLIP-guided SDXL denoising step: genart's guided sampler beside the community
pipeline's loop, on SDXL base 1.0's real architecture with random weights (nothing downloaded).

`python -m genart.tools.guided_bench [--steps 2] [--size 256 256] [--profile] ...` runs each part
in a fresh child process, one after the other (two SDXLs do not fit in 23 GiB together):

* parity: from the same x_t, RNG and crops, one guided step of each loop; max |Δ| of x_{t-1}
  and of the objective, against a tolerance for the precision (the loops compute ε_text in
  batches of other sizes, so they are not bitwise equal).
* community: `genart.tools.community_guided` (diffusers' CLIPGuidedStableDiffusion cond_fn,
  restated) on the run's UNet, VAE, scheduler and objective, at the run's precision.
* genart: `render.guided_step` with `clip_guidance.scale > 0` (genart.guidance).
* modes that change the algorithm on purpose, genart only: clip_guidance.decoder=taesd,
  clip_guidance.every=2 (mean s/step over pairs of steps), LCM in 4 steps (the whole run).

Each child builds the run as `python -m genart` composes it (bench.compose_config: every
`pretrained` node random), with the UNet and text encoders made directly at the run's precision,
warms up one step, times `--steps` steps and, for the two loops, as many unguided ones. The
split (`--profile`) comes from one extra profiled step: forward time per model, backward ops
attributed to the model whose forward made their graph node (as genart.tools.bench splits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from genart.tools.bench import (
    BACKWARD,
    _inside_backward_op,
    _range_of,
    build_genart,
    cpu_name,
    peak_rss_mb,
    write_report,
)
from genart.tools.plain_loop import RANGE

PARTS = ("unet", "vae", "taesd", "cutouts", "guide", "losses")
MODES = {  # mode → overrides; each changes the algorithm on purpose, so it is not in the ratio
    "taesd": ["clip_guidance.decoder=taesd"],
    "every2": ["clip_guidance.every=2"],
    "lcm4": [
        "generator.sampler.scheduler=LCMScheduler",
        "generator.sampler.steps=4",
        "generator.sampler.cfg_scale=1.0",  # sdxl_lcm.yaml's: LCM samples without CFG
    ],
}
# max |Δx_{t-1}| as a share of the step's own move max |x_{t-1} − x_t|, and the objective's
# relative gap. fp32: batch-of-2 and batch-of-1 GEMMs sum in other orders (~1e-6); bf16: each
# UNet layer rounds to 8 bits, so ε_text from the [uncond, text] batch and from its own
# forward differ by ~1 % of ε, times cfg_scale in the step.
TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.1}


# -- building ---------------------------------------------------------------------------------
@contextlib.contextmanager
def components_built_at(dtype):
    """Random SDXL components (sdxl_tiny.tiny_components) made directly at `dtype`: the real
    UNet would take 10.4 GB in fp32 before its cast to bf16 (5.2 GB)."""
    import torch

    import genart.generators.sdxl_tiny as tiny

    original = tiny.tiny_components

    def at_dtype(architecture, seed):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return original(architecture, seed)
        finally:
            torch.set_default_dtype(default)

    tiny.tiny_components = at_dtype
    try:
        yield
    finally:
        tiny.tiny_components = original


def build_run(s: dict, mode: str | None = None) -> tuple:
    """A built run for these settings (and mode), its build time and the build's peak RSS."""
    from genart.speed.precision import dtype_of

    start = time.perf_counter()
    with components_built_at(dtype_of(s["precision"])):
        run, _ = build_genart({**s, "overrides": overrides_of(s, mode)})
    return run, {"build_s": time.perf_counter() - start, "build_peak_rss_mb": peak_rss_mb()}


def overrides_of(s: dict, mode: str | None) -> list[str]:
    return [
        f"clip_guidance.scale={s['scale']}",
        f"generator.dtype={s['precision']}",  # built at the run's precision, cast once
        f"generator.sampler.steps={steps_needed(s)}",
        f"threads={s['threads']}",
        *MODES.get(mode, []),
        *s["overrides"],
    ]


def steps_needed(s: dict) -> int:
    """Denoising steps the longest child walks: warm-up, timed and profiled guided steps, then
    as many unguided ones, or every=2's pairs."""
    return max(30, 2 * (s["warmup"] + s["steps"]) + 2)


# -- measuring --------------------------------------------------------------------------------
def timed(step, first: int, n: int, per: int = 1) -> dict:
    """n calls step(first + per·k), each `per` steps long: wall seconds per step (median, min,
    all) and this process's CPU seconds per step (all threads: steadier on a shared machine)."""
    times, cpu = [], []
    for k in range(n):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        step(first + per * k)
        times.append((time.perf_counter() - start) / per)
        cpu.append((cpu_seconds() - start_cpu) / per)
    return {
        "s_per_step": statistics.median(times),
        "s_per_step_min": min(times),
        "times": times,
        "cpu_s_per_step": statistics.median(cpu),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def model_ranges(generator):
    """Profiler ranges `genart/<model>` around each model's forward, by hooks (neither loop's
    code names them): the UNet, the VAE's decoder (and its guidance copy), TAESD's decoder."""
    from torch.profiler import record_function

    models = [("unet", generator.unet), ("vae", generator.vae.decoder)]
    guidance_vae, taesd = (getattr(generator, k, None) for k in ("guidance_vae", "taesd"))
    if guidance_vae is not None:
        models.append(("vae", guidance_vae.decoder))
    if taesd is not None:
        models.append(("taesd", getattr(taesd, "decoder", taesd)))
    handles = []
    for name, module in models:
        open_ranges = []

        def enter(module, args, name=name, open_ranges=open_ranges):
            open_ranges.append(record_function(RANGE + name).__enter__())

        def leave(module, args, out, open_ranges=open_ranges):
            open_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def split_parts(events, wall: float) -> dict:
    """Seconds per model: forward = its range; backward = ops whose graph node it made."""
    made_by = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD) and _range_of(e) in PARTS:
            made_by.setdefault(e.sequence_nr, _range_of(e))
    spent = Counter()
    for e in events:
        if e.name.startswith(RANGE) and e.name[len(RANGE) :] in PARTS:
            spent[e.name[len(RANGE) :] + "_fwd"] += e.cpu_time_total / 1e6
        elif e.name.startswith(BACKWARD) and not _inside_backward_op(e):
            spent[(made_by.get(e.sequence_nr) or "other") + "_bwd"] += e.cpu_time_total / 1e6
    spent["rest"] = max(wall - sum(spent.values()), 0.0)
    order = [f"{p}_{k}" for p in PARTS for k in ("fwd", "bwd")] + ["other_bwd", "rest"]
    return {**{k: round(spent[k], 3) for k in order if k in spent}, "total": round(wall, 3)}


def profiled(step, i: int, generator) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with model_ranges(generator), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step(i)
        wall = time.perf_counter() - start
    return split_parts(prof.events(), wall)


def measure_loop(step, plain_step, s: dict, generator) -> dict:
    """Warm-up, timed guided steps, the profiled one (--profile), then timed unguided steps."""
    for i in range(s["warmup"]):
        step(i)
    guided = timed(step, s["warmup"], s["steps"])
    i = s["warmup"] + s["steps"]
    split = profiled(step, i, generator) if s["profile"] else None
    return {**guided, "unguided": timed(plain_step, i + 1, s["steps"]), "split": split}


def snapshot(run) -> dict:
    """The sampler's x_t and RNG, and the global RNG (the crops), to rewind to."""
    import torch

    sampler = run.updater.sampler
    return {
        "latents": sampler.latents.clone(),
        "rng": sampler.rng.get_state(),
        "global_rng": torch.get_rng_state(),
    }


def rewind(run, state: dict) -> None:
    """Back to `state` at step 0 of a freshly set scheduler (every scheduler sets its own)."""
    import torch

    sampler = run.updater.sampler
    scheduler = sampler.pipe.scheduler
    scheduler.set_timesteps(len(sampler), device=sampler.latents.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    sampler.latents = state["latents"].clone()
    sampler.rng.set_state(state["rng"])
    torch.set_rng_state(state["global_rng"])


# -- children ---------------------------------------------------------------------------------
def genart_step(run):
    """genart's guided denoising step i (genart.samplers.SampleUpdater with clip_guidance)."""
    from genart.render import guided_step

    return lambda i: guided_step(run, i)["total"]


def community_loop(run):
    from genart.tools.community_guided import CommunityGuidedLoop

    scale = float(run.updater.guidance.scale)
    return CommunityGuidedLoop(run.generator, run.objective, run.updater.sampler, scale)


def child_genart(s: dict) -> dict:
    run, built = build_run(s)
    sampler, generator = run.updater.sampler, run.generator
    plain = lambda i: sampler.step(i, generator.conditioning(i))  # noqa: E731
    return {**built, **measure_loop(genart_step(run), plain, s, generator), **env_of(run)}


def child_community(s: dict) -> dict:
    run, built = build_run(s)
    loop = community_loop(run)
    return {**built, **measure_loop(loop.step, loop.plain_step, s, run.generator), **env_of(run)}


def child_parity(s: dict) -> dict:
    """One guided step of each loop from the same x_t, sampler RNG and global RNG (crops)."""

    run, _ = build_run(s)
    state = snapshot(run)
    x_t = state["latents"]
    total = float(genart_step(run)(0))
    ours = run.updater.sampler.latents.detach().clone()
    rewind(run, state)
    theirs_total = float(community_loop(run).step(0))
    theirs = run.updater.sampler.latents.detach().clone()
    move = float((theirs - x_t).abs().max())
    gap = float((ours - theirs).abs().max())
    tol = TOLERANCE[s["precision"]]
    total_gap = abs(total - theirs_total) / max(abs(theirs_total), 1e-12)
    return {
        "pass": bool(gap <= tol * move and total_gap <= tol),
        "tolerance": tol,
        "latents_max_abs_diff": gap,
        "latents_step_max_abs": move,
        "latents_diff_share_of_step": gap / move if move else float("inf"),
        "objective_genart": total,
        "objective_community": theirs_total,
        "objective_rel_diff": total_gap,
    }


def child_mode(s: dict, mode: str) -> dict:
    """A genart mode that changes the algorithm: s/step (every2: per step over pairs; lcm4:
    the whole 4-step run after a rewound warm-up step)."""

    run, built = build_run(s, mode)
    step = genart_step(run)
    if mode == "every2":
        step(0), step(1)  # warm-up: one guided, one plain
        pair = lambda i: (step(i), step(i + 1))  # noqa: E731
        return {**built, **timed(pair, 2, s["steps"], per=2), **env_of(run)}
    if mode == "lcm4":
        state = snapshot(run)
        step(0)
        rewind(run, state)
        times = timed(step, 0, len(run.updater.sampler))
        return {**built, **times, "run_s": sum(times["times"]), **env_of(run)}
    for i in range(s["warmup"]):
        step(i)
    return {**built, **timed(step, s["warmup"], s["steps"]), **env_of(run)}


def env_of(run) -> dict:
    import torch

    return {"precision": run.env["precision"], "threads": torch.get_num_threads()}


CHILDREN = {"parity": child_parity, "community": child_community, "genart": child_genart}


def child_main(kind: str, s: dict, out: str) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(s["threads"])
    result = CHILDREN[kind](s) if kind in CHILDREN else child_mode(s, kind)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


def run_child(kind: str, s: dict) -> dict:
    """One part in a fresh interpreter; its result, or {"error": its stderr's tail}."""
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "out.json", Path(tmp) / "log"
        cmd = [sys.executable, "-m", "genart.tools.guided_bench", "--child", kind]
        cmd += ["--settings", json.dumps(s), "--out", str(out)]
        start = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        if proc.returncode != 0 or not out.exists():
            return {"error": log.read_text()[-3000:]}
        return {**json.loads(out.read_text()), "child_wall_s": time.perf_counter() - start}


# -- the parent -------------------------------------------------------------------------------
def plan(s: dict, parity: bool) -> list[str]:
    return [*(["parity"] if parity else []), "community", "genart", *s["modes"]]


def bench(s: dict, parity: bool = True) -> dict:
    """The children one after the other; the report as written to JSON."""
    import torch

    kinds, start = plan(s, parity), time.perf_counter()
    report = {"settings": s, "cpu": cpu_name(), "precision": s["precision"]}
    report.update(torch=torch.__version__, load_avg=list(os.getloadavg()))
    for kind in kinds:
        print(f"  {kind} ...", end="", flush=True)
        report[kind] = run_child(kind, s)
        print(progress(report[kind]), flush=True)
    for kind in ("community", "genart"):
        if "error" in report[kind]:
            raise SystemExit(
                f"genart.tools.guided_bench: child '{kind}' failed:\n{report[kind]['error']}"
            )
    loops = {k: report.pop(k) for k in ("community", "genart")}
    report["loops"] = loops
    report["ratio"] = loops["community"]["s_per_step"] / loops["genart"]["s_per_step"]
    report["ratio_cpu"] = loops["community"]["cpu_s_per_step"] / loops["genart"]["cpu_s_per_step"]
    report["unguided_s_per_step"] = {k: v["unguided"]["s_per_step"] for k, v in loops.items()}
    report["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in loops.items()}
    report["modes"] = {m: mode_row(report.pop(m)) for m in s["modes"]}
    report.update(wall_s=time.perf_counter() - start, load_avg_end=list(os.getloadavg()))
    return report


def progress(r: dict) -> str:
    """One child's line as it finishes: its wall time, build, s/step and peak RSS."""
    if "error" in r:
        return " failed"
    step = f", {r['s_per_step']:.2f} s/step" if "s_per_step" in r else ""
    build = f", build {r['build_s']:.0f} s" if "build_s" in r else ""
    return f" {r['child_wall_s']:.0f} s{build}{step}, peak RSS {r['peak_rss_mb']:.0f} MB"


def mode_row(result: dict) -> dict:
    if "error" not in result:
        return result
    last = [line for line in result["error"].strip().splitlines() if line.strip()][-1:]
    return {"not available": last[0] if last else "the child failed", "log": result["error"]}


def format_table(report: dict) -> str:
    s, loops = report["settings"], report["loops"]
    g, c = loops["genart"], loops["community"]
    lines = [
        f"genart.tools.guided_bench: generator={s['generator']} {s['size'][0]}x{s['size'][1]}, "
        f"guide={s['guide']}, clip_guidance.scale={s['scale']}, {s['precision']}, "
        f"{s['threads']} threads, torch {report['torch']}, load {report['load_avg'][0]:.2f}",
        f"cpu: {report['cpu']}",
    ]
    p = report.get("parity")
    if p and "error" not in p:
        lines.append(
            f"parity, one guided step: max|Δx_t-1| {p['latents_max_abs_diff']:.2e} = "
            f"{p['latents_diff_share_of_step']:.1e} of the step's move, objective "
            f"{p['objective_genart']:.6f} vs {p['objective_community']:.6f} (tol "
            f"{p['tolerance']:.0e}) -> {'PASS' if p['pass'] else 'FAIL'}"
        )
    elif p:
        lines.append(f"parity: child failed: {p['error'].strip().splitlines()[-1]}")
    row = "{:<34}{:>14}{:>14}"
    lines += [
        row.format("", "community", "genart"),
        row.format(f"guided s/step (median of {s['steps']})", *_f(c, g, "s_per_step")),
        row.format("guided s/step (min)", *_f(c, g, "s_per_step_min")),
        row.format("guided CPU s/step (all threads)", *_f(c, g, "cpu_s_per_step")),
        row.format("unguided s/step", *_f(c["unguided"], g["unguided"], "s_per_step")),
        row.format("peak RSS MB", *_f(c, g, "peak_rss_mb", "{:.0f}")),
        row.format(
            "build s (peak RSS MB then)",
            *(f"{x['build_s']:.0f} ({x['build_peak_rss_mb']:.0f})" for x in (c, g)),
        ),
        f"ratio community / genart s/step: {report['ratio']:.2f}x "
        f"(by CPU seconds: {report['ratio_cpu']:.2f}x)",
    ]
    if g.get("split"):
        lines.append("split, s (one profiled step):")
        keys = list(dict.fromkeys([*c["split"], *g["split"]]))
        lines += [row.format(f"  {k}", *_f(c["split"], g["split"], k, default=0.0)) for k in keys]
    for mode, r in report["modes"].items():
        if "not available" in r:
            lines.append(f"mode {mode}: not available: {r['not available']}")
            continue
        extra = f", whole run {r['run_s']:.2f} s" if "run_s" in r else ""
        lines.append(
            f"mode {mode} (genart): {r['s_per_step']:.2f} s/step{extra}, "
            f"{g['s_per_step'] / r['s_per_step']:.2f}x genart's guided step, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    lines.append(f"whole benchmark: {report['wall_s']:.0f} s")
    return "\n".join(lines)


def _f(a: dict, b: dict, key: str, fmt: str = "{:.2f}", default=None) -> list[str]:
    return [fmt.format(x.get(key, default)) for x in (a, b)]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m genart.tools.guided_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--steps", type=int, default=2, help="timed steps per loop (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"))
    ap.add_argument("--cutn", type=int, default=32, help="cutouts per step (conf/cutouts' 32)")
    ap.add_argument(
        "--scale",
        type=float,
        default=100.0,
        help="clip_guidance.scale (the community example's clip_guidance_scale)",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="both loops' precision; auto: what a run picks on this CPU",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: this machine's cores)",
    )
    ap.add_argument("--generator", default="sdxl_random", help="conf/generator option (SDXL)")
    ap.add_argument("--guide", default="clip_vitb32", help="conf/guide option (random weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--modes",
        nargs="*",
        default=list(MODES),
        choices=list(MODES),
        help="genart modes that change the algorithm, timed as separate rows",
    )
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="a Hydra override for every child (repeatable)",
    )
    ap.add_argument("--profile", action="store_true", help="split one step of each loop by model")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity check")
    ap.add_argument("--out", default="outputs/guided_bench.json", help="where to write the report")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict:
    import torch

    from genart.speed.precision import resolve_precision

    keys = "steps warmup size cutn scale threads generator guide seed modes overrides profile"
    s = {k: getattr(args, k) for k in keys.split()}
    s.update(precision=resolve_precision(args.precision, torch.device("cpu")), compile=False)
    return s


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.settings), args.out)
        return
    s = settings_of(args)
    print(
        f"genart.tools.guided_bench on {cpu_name()}, {s['precision']}, {s['threads']} threads: "
        f"children {', '.join(plan(s, not args.no_parity))}, one after the other"
    )
    report = bench(s, parity=not args.no_parity)
    print(format_table(report))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
