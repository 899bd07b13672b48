"""Times every kernel candidate of every part of the step, once per CPU kind this CPU can pose as.

`python -m genart.tools.kernel_bench` is the measurement behind genart.speed.kernels' rule. Each
CPU kind runs in its own child process, because oneDNN and ATen read their ISA limits once, at
start-up: `native` (whatever this CPU is), `avx512` (ONEDNN_MAX_CPU_ISA=AVX512_CORE: AVX-512
without bf16 dot products) and `avx2` (oneDNN and ATen both held to AVX2). A CPU poses only as
kinds below its own; an AMX machine is needed to measure `amx_bf16`.

In each child, for fp32 and bf16, every part starts from the rule's plan for that kind and
changes one choice at a time (genart.speed.kernels.PARTS); each candidate runs forward + backward
at the real sizes (VQGAN f16 decoder at 256², ViT-B/32 on 32 views of 224², the resampling of 32
views from 256²), one warm-up then the median of `--repeats`. Random weights, nothing downloaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

POSES = {  # what each child's environment holds the CPU to
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
CANDIDATES = {  # part → its choices (the plan's own is timed as "rule")
    "decoder": {"decoder_upsample": ("phases", "nearest_conv")}
    | {"decoder_layout": ("channels_last", "contiguous")}
    | {"decoder_reduced": ("autocast", "cast")},
    "guide": {"attention": ("bmm", "library"), "guide_reduced": ("cast", "autocast")},
    "resample": {"resample": ("reduced", "fp32")},
}
DTYPES = (("fp32", "float32"), ("bf16", "bfloat16"))  # names → torch attributes (lazy import)
REDUCED_ONLY = {"decoder_reduced", "guide_reduced", "resample"}


def interleaved_seconds(steps: dict, repeats: int) -> dict:
    """Median wall time of each step, the steps taking turns (one untimed round first), so that
    drift in the machine's speed hits every candidate alike. A step is (prepare, run): only run
    is timed."""
    times = {label: [] for label in steps}
    for round_ in range(repeats + 1):
        for label, (prepare, run) in steps.items():
            prepare()
            start = time.perf_counter()
            run()
            if round_:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


@functools.cache
def frozen_generator(settings: str):
    """The real VQGAN architecture with random weights, built once per child."""
    from hydra.utils import instantiate

    from genart.tools.bench import compose_config

    return instantiate(compose_config(json.loads(settings), "fp32").generator)


def decoder_step(settings: dict, dtype, plan):
    import torch

    generator = frozen_generator(json.dumps(settings))  # re-planned from its fp32 weights
    with torch.no_grad():
        weights = torch.randn(generator().shape, generator=torch.Generator().manual_seed(0))

    def prepare():
        generator.set_precision(dtype, plan)
        generator.z.grad = None

    def run():
        (generator() * weights).sum().backward()

    return prepare, run


def guide_step(settings: dict, dtype, plan):
    import torch
    from hydra.utils import instantiate

    from genart.tools.bench import compose_config

    guide = instantiate(compose_config(settings, "fp32").guide)
    guide.set_precision(dtype, plan)
    model = next(iter(guide.models.values()))
    size = model.input_size
    pixels = torch.rand(settings["cutn"], 3, size, size, requires_grad=True)

    def prepare():
        pixels.grad = None

    def run():
        model.encode_image(pixels).sum().backward()

    return prepare, run


def resample_step(settings: dict, dtype, plan):
    import torch

    from genart.cutouts import Cutouts
    from genart.speed.resample import resample_crops

    cutouts = Cutouts(cutn=settings["cutn"], cut_size=224)
    cutouts.set_precision(dtype, plan)
    width, height = settings["size"]
    image = torch.rand(1, 3, height, width, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, width, height]]).repeat(settings["cutn"], 1)

    def prepare():
        image.grad = None

    def run():
        resample_crops(image, boxes, 224, cutouts.dtype).sum().backward()

    return prepare, run


STEPS = {"decoder": decoder_step, "guide": guide_step, "resample": resample_step}


def measure_kind(settings: dict, repeats: int) -> dict:
    """In this process: the rule's plan and each one-choice change, timed per part and dtype."""
    import torch

    from genart.speed.kernels import cpu_kind, kernel_plan, with_choices
    from genart.speed.precision import cpu_bf16

    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    out = {"kind": cpu_kind(), "threads": torch.get_num_threads(), "dtypes": {}}
    if not cpu_bf16()["native"]:  # bf16 is emulated: too slow to time at full size
        out["emulated_bf16"] = emulation_cost(settings, repeats)
        dtypes = torch_dtypes()[:1]
    else:
        dtypes = torch_dtypes()
    for name, dtype in dtypes:
        rule = kernel_plan("cpu", dtype)
        rows = out["dtypes"][name] = {"rule": rule.as_dict(), "parts": {}}
        for part, choices in CANDIDATES.items():
            steps = {"rule": STEPS[part](settings, dtype, rule)}
            for key, options in choices.items():
                if dtype == torch.float32 and key in REDUCED_ONLY:
                    continue  # only below fp32 does this choice exist
                for option in options:
                    if option != getattr(rule, key):
                        plan = with_choices(rule, **{key: option})
                        steps[f"{key}={option}"] = STEPS[part](settings, dtype, plan)
            timed = rows["parts"][part] = interleaved_seconds(steps, repeats)
            print(f"{out['kind']} {name} {part}: {timed}", file=sys.stderr, flush=True)
    return out


def torch_dtypes() -> list:
    import torch

    return [(name, getattr(torch, attr)) for name, attr in DTYPES]


def emulation_cost(settings: dict, repeats: int) -> dict:
    """Without native bf16: each part's bf16 time over its fp32 time, at 64² and 2 views."""

    from genart.speed.kernels import kernel_plan

    small = {**settings, "size": [64, 64], "cutn": 2}
    cost = {}
    for part, make in STEPS.items():
        plans = {name: (dtype, kernel_plan("cpu", dtype)) for name, dtype in torch_dtypes()}
        steps = {name: make(small, *plan) for name, plan in plans.items()}
        timed = interleaved_seconds(steps, 1)  # ~20 s a call: one timed round
        cost[part] = {**timed, "slowdown": timed["bf16"] / timed["fp32"]}
    return cost


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m genart.tools.kernel_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--poses", nargs="+", default=list(POSES), choices=list(POSES))
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per candidate (median)")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"))
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default="outputs/kernel_bench.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict:
    return {
        "size": args.size,
        "cutn": args.cutn,
        "threads": args.threads,
        "generator": "vqgan",
        "guide": "clip_vitb32",
        "seed": 0,
        "precision": "fp32",
        "compile": False,
        "overrides": [],
    }


def run_pose(pose: str, args: argparse.Namespace) -> dict:
    """One child process held to `pose`'s ISA; its measurements."""
    argv = [
        sys.executable,
        "-m",
        "genart.tools.kernel_bench",
        "--child",
        "--repeats",
        str(args.repeats),
    ]
    argv += ["--size", *map(str, args.size), "--cutn", str(args.cutn)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, **POSES[pose]}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    return {"env": POSES[pose], **json.loads(done.stdout)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_kind(settings_of(args), args.repeats)))
        return
    import torch

    from genart.tools.bench import cpu_name

    report = {"cpu": cpu_name(), "torch": torch.__version__, "poses": {}}
    for pose in args.poses:
        report["poses"][pose] = run_pose(pose, args)
        print(json.dumps({pose: report["poses"][pose]}, indent=1))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
