"""Seconds per step of genart's loop beside a plain VQGAN+CLIP loop, from one run.

`python -m genart.bench [--steps N] [--precision auto] ...` runs each part in its own child
process, so that peak memory (ru_maxrss) is per loop:

* plain: nerdyrodent/VQGAN-CLIP's generate.py step at its defaults, written out
  (`genart.tools.plain_loop`: fp32, both models frozen, the whole image pooled into every view).
* genart_pooled: `render.build`, `render.build_objective` and `render.guided_step` from the real
  configs with `cutouts=pooled`, the plain loop's work (random weights of the real
  architectures, nothing downloaded), at the asked precision / compile.
* genart: the same with genart's default cutouts (random crops), what a run does by default.
* parity: fp32 plain loop against genart with `cutouts=pooled`, the same weights, z,
  augmentation parameters and noise in both; their first-step loss and θ-gradient must agree
  (torch.allclose), augmentations off, then on.

The timed loops take turns, phase by phase (build, each step): all are resident, one runs
while the others wait, so drift in the machine's speed hits every loop alike.

The split comes from `torch.profiler` ranges (`genart/<part>`) of one extra profiled step:
forward time per range, backward ops attributed to the range that created their graph node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from genart.tools.plain_loop import RANGE, build_plain

BACKWARD = "autograd::engine::evaluate_function: "
PARTS = ("generator", "cutouts", "guide", "losses", "optimizer")
POOLED = "cutouts=pooled"  # genart making the plain loop's views: identical work


def pooled(s: dict) -> dict:
    """Settings for genart with the plain loop's views."""
    return {**s, "overrides": [POOLED, *s.get("overrides", [])]}


# -- configs ----------------------------------------------------------------------------------
def compose_config(s: dict, precision: str | None = None):
    """The job config as `python -m genart` composes it, every `pretrained` node set to random."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    width, height = s["size"]
    overrides = [
        f"generator={s['generator']}",
        f"guide={s['guide']}",
        "logger=none",
        f"size=[{width},{height}]",
        f"cutouts.cutn={s['cutn']}",
        f"seed={s['seed']}",
        f"precision={precision or s['precision']}",
        f"compile={str(s['compile']).lower()}",
        *s.get("overrides", []),
    ]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if "pretrained" in cfg.generator:
        cfg.generator.pretrained = None
    for node in cfg.guide.models.values():
        if node is not None:
            node.pretrained = None
    return cfg


def build_genart(s: dict, precision: str | None = None):
    """A built `Run`, objective included, and its config, as `genart.render.render` builds them
    without an init image."""
    from genart.pretrained import resolve_all_pretrained
    from genart.render import Run, build, build_objective, embed_targets

    cfg = resolve_all_pretrained(compose_config(s, precision))
    run = Run(run_dir=Path(tempfile.gettempdir()) / "genart-bench", config={}, meta={})  # unused
    build(cfg, run)
    run.objective = build_objective(run, embed_targets(run), {})
    return run, cfg


# -- measuring --------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _range_of(event) -> str | None:
    while event is not None and not event.name.startswith(RANGE):
        event = event.cpu_parent
    return None if event is None else event.name[len(RANGE) :]


def split_from_events(events, wall: float) -> dict:
    """Seconds per part: forward = its range; backward = ops whose graph node the range made."""
    made_by = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD) and _range_of(e) in PARTS:
            made_by.setdefault(e.sequence_nr, _range_of(e))
    spent = Counter()
    for e in events:
        if e.name.startswith(RANGE):
            spent[e.name[len(RANGE) :] + "_fwd"] += e.cpu_time_total / 1e6
        elif e.name.startswith(BACKWARD) and not _inside_backward_op(e):
            spent[(made_by.get(e.sequence_nr) or "unattributed") + "_bwd"] += e.cpu_time_total / 1e6
    backward_range = spent.pop("backward_fwd", 0.0)
    attributed = sum(v for k, v in spent.items() if k.endswith("_bwd"))
    spent["backward_other"] = max(backward_range - attributed, 0.0)
    spent["optimizer"] = spent.pop("optimizer_fwd", 0.0)
    spent["other"] = max(wall - sum(spent.values()), 0.0)
    return {**{k: round(v, 4) for k, v in sorted(spent.items(), key=_split_order)}, "total": wall}


def _inside_backward_op(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(BACKWARD):
            return True
        parent = parent.cpu_parent
    return False


def profiled_split(step, i: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step(i)
        wall = time.perf_counter() - start
    return split_from_events(prof.events(), wall)


class Turns:
    """A child's side of taking turns with the other loop: each phase waits for the parent's
    `go` line on stdin and answers `done`, so the loops' steps alternate in time and a machine
    that speeds up or slows down (±15 % here within minutes) does so for both loops alike."""

    def __init__(self, channel=None):
        self.channel = channel  # None: not taking turns (parity, fidelity, tests)

    @contextlib.contextmanager
    def __call__(self):
        if self.channel is not None and sys.stdin.readline().strip() != "go":
            raise SystemExit(PARENT_GONE)
        yield
        if self.channel is not None:
            self.channel.write("done\n")
            self.channel.flush()


ALONE = Turns()  # a part that runs by itself
PARENT_GONE = "genart.tools.bench child: stopped, the parent or the other loop went away"


def phases(s: dict) -> int:
    """Turns a timed loop takes: build, warm-up steps, timed steps, the profiled step."""
    return 1 + s["warmup"] + s["steps"] + 1


def measure(step, s: dict, turn: Turns = ALONE) -> dict:
    """Warm-up steps, then timed steps (median), then one profiled step for the split."""
    for i in range(s["warmup"]):
        with turn():
            step(i)
    times, losses = [], []
    for i in range(s["warmup"], s["warmup"] + s["steps"]):
        with turn():
            start = time.perf_counter()
            losses.append(step(i).detach())
            times.append(time.perf_counter() - start)
    with turn():
        split = profiled_split(step, s["warmup"] + s["steps"])
    return {
        "s_per_step": statistics.median(times),
        "s_per_step_min": min(times),
        "times": times,
        "losses": [float(x) for x in losses],
        "split": split,
    }


# -- children ---------------------------------------------------------------------------------
def child_genart(s: dict, turn: Turns = ALONE) -> dict:
    from genart.render import guided_step

    with turn():
        run, cfg = build_genart(s)
    result = measure(lambda i: guided_step(run, i)["total"], s, turn)
    cutouts = cfg.cutouts._target_.rpartition(".")[2]
    return {
        **result,
        "precision": run.env["precision"],
        "compile": s["compile"],
        "cutouts": cutouts,
    }


def child_plain(s: dict, turn: Turns = ALONE) -> dict:
    with turn():
        plain = build_plain(compose_config(pooled(s), "fp32"))
    result = measure(plain.step, s, turn)
    return {**result, "precision": "fp32", "cutouts": "pooled"}


class Recorder:
    """Wraps a module-level function and keeps what each call returned (parity inputs)."""

    def __init__(self, module, name: str):
        self.module, self.name, self.seen = module, name, []
        self.original = getattr(module, name)

    def __enter__(self):
        def wrapped(*args, **kwargs):
            self.seen.append(self.original(*args, **kwargs))
            return self.seen[-1]

        setattr(self.module, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


# Gradient tolerance, as a share of max|g|: both loops pool the same pixels, so only fp32
# rounding differs (genart's decoder, ViT and hue paths). Measured 4-6e-6 on the tiny models at
# 64² and 128²; on the real architectures at 256², 4.9e-4 (augmentations off) and 1.7e-3 (on)
# with cos 1.000000 (AMD EPYC, 2 threads): max pooling sends each cell's gradient to one pixel,
# and rounding flips near-tied maxima. A wrong view, pad or noise moves the loss (rtol 1e-5).
TOLERANCE = 1e-2


def child_parity(s: dict) -> dict:
    """fp32 first step of both loops, augmentations off and then on (their params replayed)."""
    off = parity_once(
        {**s, "overrides": [*s.get("overrides", []), "cutouts.augmentations=[]"]}, "off"
    )
    on = parity_once(s, "on")
    return {"pass": off["pass"] and on["pass"], "off": off, "on": on}


def parity_once(s: dict, augmentations: str) -> dict:
    """genart with `cutouts=pooled` and the plain loop from the same weights, z, augmentation
    params and noise: the same loss and θ-gradient?"""
    import torch

    import genart.cutouts
    from genart.render import guided_step
    from genart.speed.precision import apply_precision

    run, cfg = build_genart(pooled(s), "fp32")
    plain = build_plain(cfg, clip_state=next(iter(run.guide.models.values())).model.state_dict())
    z0, rng = run.generator.latent().detach().clone(), torch.get_rng_state()
    with Recorder(genart.cutouts, "sample_noise") as noise:
        loss = guided_step(run, 0)["total"].detach()
    grad = run.generator.latent().grad.clone()
    params = [dict(m._params) for m in run.cutouts.augmentations]
    with torch.no_grad():
        plain.z.copy_(z0)
    plain_loss = plain.step(0, params, noise.seen[0] if noise.seen else None).detach()
    result = compare(loss, grad, plain_loss, plain.z.grad)
    if s["precision"] != "fp32":  # the reduced-precision gradient from the same start, for info
        apply_precision([run.generator, run.guide, run.cutouts], s["precision"])
        with torch.no_grad():
            run.generator.latent().copy_(z0)
        torch.set_rng_state(rng)
        low = guided_step(run, 0)["total"].detach()
        result[s["precision"]] = compare(low, run.generator.latent().grad, plain_loss, plain.z.grad)
    return {**result, "augmentations": augmentations, "noise": bool(noise.seen)}


def compare(loss, grad, plain_loss, plain_grad, tolerance: float = TOLERANCE) -> dict:
    import torch

    scale = float(plain_grad.abs().max())
    same = torch.allclose(loss, plain_loss, rtol=1e-5, atol=1e-6) and torch.allclose(
        grad, plain_grad, rtol=tolerance, atol=tolerance * scale
    )
    cos = float(torch.nn.functional.cosine_similarity(grad.flatten(), plain_grad.flatten(), dim=0))
    return {
        "pass": bool(same),
        "tolerance": tolerance,
        "loss_genart": float(loss),
        "loss_plain": float(plain_loss),
        "grad_cos": cos,
        "grad_max_abs_err_rel": float((grad - plain_grad).abs().max()) / scale,
    }


def loss_trajectory(s: dict, precision: str, steps: int, grad_noise: float = 0.0) -> list[float]:
    """Free-running losses; `grad_noise` multiplies θ's gradient by 1 + ε·N(0, 1) (a floor)."""
    import torch

    from genart.render import guided_step

    run, _ = build_genart(s, precision)
    if grad_noise:
        gen = torch.Generator().manual_seed(s["seed"])  # not the global RNG: same crops
        for p in run.generator.theta():
            p.register_hook(lambda g: g * (1 + grad_noise * torch.randn(g.shape, generator=gen)))
    return [float(guided_step(run, i)["total"].detach()) for i in range(steps)]


def along_fp32(s: dict, steps: int) -> dict:
    """The fp32 trajectory, and at each of its steps the reduced-precision loss and gradient
    from the same θ, crops, augmentations and noise (a shadow run reset to θ every step)."""
    import torch
    import torch.nn.functional as F

    from genart.render import guided_step

    full, _ = build_genart(s, "fp32")
    rng = torch.get_rng_state()
    shadow, _ = build_genart(s, s["precision"])
    torch.set_rng_state(rng)
    curve, gaps, cosines = [], [], []
    for i in range(steps):
        state = torch.get_rng_state()
        with torch.no_grad():
            shadow.generator.latent().copy_(full.generator.latent())
        low = float(guided_step(shadow, i)["total"].detach())
        torch.set_rng_state(state)
        curve.append(float(guided_step(full, i)["total"].detach()))
        gaps.append(abs(low - curve[-1]))
        pair = [r.generator.latent().grad.flatten() for r in (full, shadow)]
        cosines.append(float(F.cosine_similarity(*pair, dim=0)))
    return {"fp32": curve, "gaps": gaps, "grad_cos_min": min(cosines)}


def child_fidelity(s: dict, floor: bool = True) -> dict:
    """Loss of the reduced precision against fp32 over `fidelity_steps` steps, three ways.

    along: |L_low(θ_t) − L_fp32(θ_t)| on fp32's own θ_t, crops and noise: the precision error,
    checked against 5 % of fp32's decrease L(0) − L(N). free: the two runs each on their own;
    VQGAN + Adam are chaotic (Adam's step ≈ lr·sign(g); a code flips when z crosses a cell), so
    free runs part once gradients differ by about as much as reduced precision makes them differ.
    `floor` shows that for fp32 itself: its gradient perturbed by ε·N(0, 1), ε the reduced
    precision's own relative gradient error sqrt(2(1 − cos)) at its worst step (tiny models, lr
    0.05: ε = 1 % parts fp32 from fp32 by 68 % of the decrease, bf16 from fp32 by 54 %).
    """
    steps, name = s["fidelity_steps"], s["precision"]
    along = along_fp32(s, steps + 1)
    full, low = along["fp32"], loss_trajectory(s, name, steps + 1)
    decrease = full[0] - full[-1]

    def share(gap: float) -> float:
        return gap / decrease if decrease > 0 else math.inf

    free_gap = max(abs(a - b) for a, b in zip(full, low, strict=True))
    result = {
        "steps": steps,
        "fp32": full,
        name: low,
        "fp32_decrease": decrease,
        "along_max_gap": max(along["gaps"]),
        "along_share": share(max(along["gaps"])),
        "along_grad_cos_min": along["grad_cos_min"],
        "free_max_gap": free_gap,
        "free_share": share(free_gap),
        "falls": bool(low[-1] < low[0]),
    }
    if floor:
        eps = max(1e-3, math.sqrt(2 * max(0.0, 1 - along["grad_cos_min"])))
        noisy = loss_trajectory(s, "fp32", steps + 1, grad_noise=eps)
        result["floor_noise"] = eps
        result["floor_share"] = share(max(abs(a - b) for a, b in zip(full, noisy, strict=True)))
    result["pass"] = bool(decrease > 0 and result["along_share"] <= 0.05 and result["falls"])
    return result


def child_ceiling(s: dict) -> dict:
    """How fast the step could be: the FLOPs of one genart step at identical work (cutouts=pooled,
    forward + backward, counted by torch's FlopCounterMode) over this CPU's rate on a bare
    4096³ GEMM in the step's precision (median of 5)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from genart.render import guided_step

    run, _ = build_genart(pooled(s))
    guided_step(run, 0)  # first-step allocations and caches out of the way
    with FlopCounterMode(display=False) as counter:
        guided_step(run, 1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[s["precision"]]
    a, b = (torch.randn(4096, 4096, dtype=dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    peak = 2 * 4096**3 / statistics.median(times)  # FLOP/s
    flops = counter.get_total_flops()
    return {"step_flops": flops, "gemm_flops_per_s": peak, "step_at_peak_s": flops / peak}


CHILDREN = {
    "plain": child_plain,
    "ceiling": child_ceiling,
    "genart_pooled": lambda s, turn=ALONE: child_genart(pooled(s), turn),
    "genart": child_genart,
    "parity": child_parity,
    "fidelity": child_fidelity,
}
TIMED = ("plain", "genart_pooled", "genart")  # the children that take turns, in this order
HEADS = {"plain": "plain", "genart_pooled": "genart pooled", "genart": "genart default"}


def run_child(kind: str, s: dict) -> dict:
    """Runs one part alone in a fresh interpreter; its result, peak RSS and others' CPU."""
    return run_children([kind], s)[kind]


def run_children(kinds: list[str], s: dict) -> dict[str, dict]:
    """Runs parts in fresh interpreters (peak RSS is per process); timed loops take turns."""
    with tempfile.TemporaryDirectory() as tmp:
        procs, started = {}, time.time()
        load, busy, own = os.getloadavg()[0], busy_seconds(), children_cpu()
        for kind in kinds:
            out, log = Path(tmp) / f"{kind}.json", open(Path(tmp) / f"{kind}.log", "w+")  # noqa: SIM115
            cmd = [sys.executable, "-m", "genart.tools.bench", "--child", kind]
            cmd += ["--settings", json.dumps(s), "--out", str(out)]
            take_turns = len(kinds) > 1 and kind in TIMED
            cmd += ["--turns"] if take_turns else []
            pipe = subprocess.PIPE if take_turns else subprocess.DEVNULL
            proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=log, text=True)
            procs[kind] = (proc, out, log, take_turns)
        turning = [procs[k][0] for k in kinds if procs[k][3]]
        take_turns_until_done(turning, phases(s))
        failed = {}
        for proc, *_ in procs.values():
            proc.wait()
        wall, results = time.time() - started, {}
        for kind, (proc, out, log, _) in procs.items():
            log.seek(0)
            if proc.returncode != 0 or not out.exists():
                failed[kind] = log.read()[-4000:]
            else:
                results[kind] = {**json.loads(out.read_text()), "load_before": load}
            log.close()
        if failed:  # the child that failed first, not one stopped because of it
            kind = next(
                (k for k, text in failed.items() if PARENT_GONE not in text), next(iter(failed))
            )
            raise SystemExit(f"genart.tools.bench: child '{kind}' failed:\n{failed[kind]}")
        own = children_cpu() - own
        others = None if busy is None else max(busy_seconds() - busy - own, 0.0) / wall
        for result in results.values():
            result["other_cpu_cores"] = others
        return results


def take_turns_until_done(procs: list, n: int) -> None:
    """n rounds of `go` to each child in order, each answered `done` before the next starts;
    stops at the first child that fails (its error is reported by the caller)."""
    try:
        for _ in range(n if procs else 0):
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                if proc.stdout.readline().strip() != "done":
                    return
    except BrokenPipeError:
        return
    finally:
        for proc in procs:  # a waiting child reads end-of-file and stops
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()


def busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy so far (/proc/stat), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_main(kind: str, s: dict, out: str, turns: bool = False) -> None:
    """One part in this process; with `turns`, stdout is the parent's channel (prints go to
    stderr) and each phase waits for the parent."""
    channel = None
    if turns:
        channel = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)  # anything else printed goes to the log, not into the channel
        sys.stdout = sys.stderr
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    result = CHILDREN[kind](s, Turns(channel)) if turns else CHILDREN[kind](s)
    result.update(peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads())
    if turns:  # exit only once every loop is done: freeing GBs would slow the others' last steps
        sys.stdin.read()
    Path(out).write_text(json.dumps(result))


# -- report -----------------------------------------------------------------------------------
def format_table(report: dict) -> str:
    s, loops = report["settings"], report["loops"]
    names = list(loops)
    lines = [
        f"genart.tools.bench: generator={s['generator']} {s['size'][0]}x{s['size'][1]}, "
        f"guide={s['guide']}, {s['cutn']} cutouts, {report['threads']} threads, "
        f"torch {report['torch']}, load {report['load_avg'][0]:.2f} at start",
    ]
    if "cpu" in report:
        cpu = report["cpu"]
        lines.append(f"cpu: {cpu['name']}; bf16 units: {', '.join(cpu['units']) or 'none'}")
    if "kernels" in report:
        k = report["kernels"]
        chosen = ", ".join(f"{p}={v}" for p, v in k.items() if p not in ("kind", "dtype", "rule"))
        lines.append(f"kernels ({k['kind']}, {k['dtype']}): {chosen}")
    for mode, p in report.get("parity", {}).items():
        if not isinstance(p, dict):
            continue
        lines.append(
            f"parity fp32, plain vs genart {POOLED}, augmentations {mode}"
            f"{' (kornia params replayed)' if mode == 'on' else ''}"
            f": loss {p['loss_genart']:.7f} vs {p['loss_plain']:.7f}, grad max err "
            f"{p['grad_max_abs_err_rel']:.1e} of max|g| (tol {p['tolerance']:.0e}), "
            f"cos {p['grad_cos']:.6f} -> {'PASS' if p['pass'] else 'FAIL'}"
        )
        for name in ("bf16", "fp16"):
            if name in p:
                lines.append(
                    f"  genart {name} vs plain fp32 (info): loss {p[name]['loss_genart']:.6f}"
                    f", grad cos {p[name]['grad_cos']:.4f}"
                )
    heads = [f"{HEADS.get(n, n)} ({loops[n]['precision']})" for n in names]
    row = "{:<24}" + "{:>22}" * len(names)
    lines += [
        row.format("", *heads),
        row.format(
            f"s/step (median of {s['steps']})", *(f"{loops[n]['s_per_step']:.2f}" for n in names)
        ),
        row.format("s/step (min)", *(f"{loops[n]['s_per_step_min']:.2f}" for n in names)),
        row.format("peak RSS MB", *(f"{loops[n]['peak_rss_mb']:.0f}" for n in names)),
        row.format("others' CPU, cores", *(_cores(loops[n]) for n in names)),
        "split, s (one profiled step):",
    ]
    keys = list(dict.fromkeys(k for n in names for k in loops[n]["split"]))
    for key in keys:
        lines.append(
            row.format(f"  {key}", *(f"{loops[n]['split'].get(key, 0.0):.3f}" for n in names))
        )
    lines.append(
        f"ratio plain / genart s/step: {report['ratio']:.2f}x at identical work ({POOLED}), "
        f"{report['ratio_default']:.2f}x at genart's defaults"
    )
    c = report.get("ceiling")
    if c:
        plain, measured = report["loops"]["plain"]["s_per_step"], report["loops"]["genart_pooled"]
        lines += [
            f"ceiling: one genart step ({POOLED}) is {c['step_flops'] / 1e9:.0f} GFLOP; a bare "
            f"4096³ {s['precision']} GEMM ran at {c['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s, so "
            f"the step takes >= {c['step_at_peak_s']:.2f} s at that rate "
            f"(measured {measured['s_per_step']:.2f} s: {measured['s_per_step'] / c['step_at_peak_s']:.2f}x it)",
            f"  4x the plain loop needs <= {plain / 4:.2f} s/step: "
            + (
                "out of reach by construction on this CPU"
                if c["step_at_peak_s"] > plain / 4
                else "within the GEMM rate"
            ),
        ]
    f = report.get("fidelity")
    if f:
        lines += [
            f"fidelity over {f['steps']} steps (fp32 decrease L(0) - L(N) = {f['fp32_decrease']:.4g}):",
            f"  along fp32's trajectory: max |L_{s['precision']} - L_fp32| = "
            f"{100 * f['along_share']:.1f}% of it, grad cos >= {f['along_grad_cos_min']:.4f}; "
            f"{s['precision']} run falls: {f['falls']} -> {'PASS' if f['pass'] else 'FAIL'}",
            f"  free-running runs: max gap {100 * f['free_share']:.0f}% of it (fp32 vs fp32 with "
            f"{100 * f.get('floor_noise', math.nan):.1f}% gradient noise, the size of "
            f"{s['precision']}'s own gradient error: {100 * f.get('floor_share', math.nan):.0f}%)",
        ]
    return "\n".join(lines)


def _cores(loop: dict) -> str:
    """Mean CPU cores other processes used while the loop ran (noise on a shared machine)."""
    cores = loop.get("other_cpu_cores")
    return "n/a" if cores is None else f"{cores:.2f}"


def _split_order(item) -> tuple:
    key = item[0] if isinstance(item, tuple) else item
    part, _, kind = key.rpartition("_")
    part = key if key in PARTS else part
    return (PARTS.index(part) if part in PARTS else len(PARTS), kind != "fwd", key == "total", key)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m genart.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per loop (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile, caches)")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"))
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="genart's precision (the plain loop is always fp32); auto: what a run picks here",
    )
    ap.add_argument("--compile", action="store_true", help="genart with compile=true")
    ap.add_argument(
        "--fidelity-steps",
        type=int,
        default=0,
        help="also compare fp32 and --precision loss trajectories over N steps",
    )
    ap.add_argument("--json", default="outputs/bench.json", help="where to write the report")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--generator", default="vqgan", help="conf/generator option")
    ap.add_argument("--guide", default="clip_vitb32", help="conf/guide option with one CLIP model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="a Hydra override for every loop, e.g. cutouts.noise=0 (repeatable)",
    )
    ap.add_argument("--no-parity", action="store_true", help="skip the parity check")
    ap.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip counting the step's FLOPs against a bare GEMM's rate",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict:
    keys = (
        "steps",
        "warmup",
        "size",
        "cutn",
        "precision",
        "compile",
        "fidelity_steps",
        "threads",
        "generator",
        "guide",
        "seed",
        "overrides",
    )
    s = {k: getattr(args, k) for k in keys}
    if s["precision"] == "auto":  # what `python -m genart` resolves it to on this CPU
        import torch

        from genart.speed.precision import resolve_precision

        s["precision"] = resolve_precision("auto", torch.device("cpu"))
    return s


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(s: dict, parity: bool = True, ceiling: bool = True) -> dict:
    """Runs the parts back to back; the report as written to JSON."""
    import torch

    from genart.speed.kernels import kernel_plan
    from genart.speed.precision import cpu_bf16, dtype_of

    report = {"settings": s, "torch": torch.__version__, "load_avg": list(os.getloadavg())}
    report["cpu"] = {"name": cpu_name(), **cpu_bf16()}  # ratios hold for this CPU kind only
    report["kernels"] = kernel_plan("cpu", dtype_of(s["precision"])).as_dict()
    if parity:
        report["parity"] = run_child("parity", s)
    loops = run_children(list(TIMED), s)
    plain = loops["plain"]["s_per_step"]
    report.update(
        loops=loops,
        threads=loops["genart"]["threads"],
        ratio=plain / loops["genart_pooled"]["s_per_step"],  # identical work
        ratio_default=plain / loops["genart"]["s_per_step"],
    )
    if s["fidelity_steps"]:
        report["fidelity"] = run_child("fidelity", s)
    if ceiling:
        report["ceiling"] = run_child("ceiling", s)
    report["load_avg_end"] = list(os.getloadavg())
    return report


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.settings), args.out, args.turns)
        return
    report = bench(settings_of(args), parity=not args.no_parity, ceiling=not args.no_ceiling)
    print(format_table(report))
    write_report(report, args.json)


def write_report(report: dict, out: str) -> None:
    """The JSON report at `out`; exit status 1 when the loops' parity check failed."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    if report.get("parity", {}).get("pass") is False:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
