"""A static, offline HTML page comparing the jobs of one Hydra multirun sweep, sortable by score.

Given a single run's folder instead, the page shows that one run.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import quote

from genart.errors import UserError
from genart.tools import sweep_dirs
from genart.tools.sweep_dirs import is_job, job_dirs, job_number, numbered

THUMB_WIDTH = 256  # trajectory thumbnails: a page of 20+ cards still animates smoothly
MAX_FRAMES = 60  # long runs are subsampled: 500 frames would weigh megabytes and play for a minute
FRAME_MS = 150
LAST_FRAME_MS = 1500  # hold the result a moment before the loop restarts

PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1rem; background: #fafafa; color: #222; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem;
  align-items: start; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
.card.failed { border-color: #c33; background: #fff5f5; }
.card h2 { font-size: 1rem; margin: 0 0 .4rem; }
.card img { width: 100%; height: auto; display: block; }
.media { display: grid; grid-template-columns: 1fr 1fr; gap: .3rem; margin-bottom: .3rem; }
.overrides { font: 12px monospace; margin: .3rem 0; padding-left: 1.2rem; }
.overrides .common { color: #999; }
.error { color: #c33; font: 12px monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
button[aria-pressed="true"] { font-weight: bold; }
</style>
</head>
<body>
<h1>$title</h1>
<p>$summary</p>
<p>Sort:
<button data-sort="desc" aria-pressed="false">score high → low</button>
<button data-sort="asc" aria-pressed="false">score low → high</button>
<button data-sort="job" aria-pressed="true">job order</button></p>
<div id="grid">$cards</div>
<script>
const grid = document.getElementById("grid"), buttons = document.querySelectorAll("[data-sort]");
const scoreOf = (card) => (card.dataset.score === "" ? null : Number(card.dataset.score));
function sortCards(mode) {
  const order = (a, b) => {
    const byJob = a.dataset.job - b.dataset.job, x = scoreOf(a), y = scoreOf(b);
    if (mode === "job") return byJob;
    if (x === null || y === null) return (x === null) - (y === null) || byJob;  // failed last
    return (mode === "desc" ? y - x : x - y) || byJob;
  };
  Array.from(grid.children).sort(order).forEach((card) => grid.appendChild(card));
  buttons.forEach((b) => b.setAttribute("aria-pressed", b.dataset.sort === mode));
}
buttons.forEach((b) => b.addEventListener("click", () => sortCards(b.dataset.sort)));
</script>
</body>
</html>
""")

CARD = Template("""<div class="card $status" data-job="$job" data-score="$score">
<h2>job $job · $status · score $score_text · seed $seed</h2>
<div class="media">$pictures</div>
$loss
<ul class="overrides">$overrides</ul>
$error
</div>""")


@dataclass(frozen=True)
class Job:
    path: Path
    number: int
    ok: bool
    score: float | None
    seed: int | None
    overrides: list[str]
    error: str | None  # the last line of the error message, for failed jobs


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Numbered job folders of a multirun dir, in job order, or a single run's own folder.

    A `UserError` for a job of a sweep (naming the sweep's folder) and for a folder of neither.
    """
    jobs = job_dirs(sweep_dir)
    if jobs:
        return jobs
    if is_job(sweep_dir):
        here = sweep_dir.resolve()
        if here.name.isdigit() and (
            (here.parent / "multirun.yaml").exists() or len(numbered(here.parent)) > 1
        ):
            sweep = sweep_dir.parent if sweep_dir.name == here.name else here.parent  # as typed
            raise UserError(
                f"{sweep_dir} is job {here.name} of a sweep; its gallery compares every job of "
                f"the sweep: python -m genart.gallery {sweep}"
            )
        return [sweep_dir]  # a single run: a page of one
    raise UserError(
        f"{sweep_dir} is not a Hydra multirun folder: expected numbered job folders "
        f"(0/, 1/, ...) holding result.json or final.png, as a sweep "
        f"(`python -m genart -m ...`) writes under outputs/multirun/<date>/<time>/, or a single "
        "run's folder (outputs/<date>/<time>/)."
    )


def read_job(path: Path) -> Job:
    """A job's card data, as genart.tools.sweep_dirs reads it (the summary reads the same)."""
    job = sweep_dirs.read_job(path)
    error = None if job["error"] is None else job["error"][:500]  # a card's width
    ok = job["status"] == "ok"
    return Job(path, job_number(path), ok, job["score"], job["seed"], job["overrides"], error)


def list_frames(frames_dir: Path) -> list[Path]:
    """frames/<step>.png in step order."""
    frames = [p for p in frames_dir.glob("*.png") if p.stem.isdigit()]
    return sorted(frames, key=lambda p: int(p.stem))


def save_trajectory(frames: list[Path], out: Path) -> None:
    """An animated, looping WebP of at most MAX_FRAMES thumbnails, always ending on the last."""
    from PIL import Image

    stride = math.ceil(len(frames) / MAX_FRAMES)
    picked = frames[::-1][::stride][::-1]  # subsample from the end so the last frame stays
    images = []
    for path in picked:
        with Image.open(path) as image:
            thumb = image.convert("RGB")
        thumb.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 8))
        images.append(thumb)
    durations = [FRAME_MS] * (len(images) - 1) + [LAST_FRAME_MS]
    out.parent.mkdir(exist_ok=True)
    images[0].save(out, save_all=True, append_images=images[1:], duration=durations, loop=0)


def plot_losses(csv_path: Path, out: Path) -> None:
    """One line per column of stats/losses.csv against step; log-y when every value is positive."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = csv_path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or not lines[0].startswith("step,"):
        raise ValueError("expected a `step,total,...` header and at least one row")
    names = lines[0].split(",")
    table = np.genfromtxt(lines[1:], delimiter=",", ndmin=2)  # (T, 1 + terms); blank -> nan
    fig = Figure(figsize=(3.2, 2.2), dpi=120)  # 384 px: a card's width
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, name in enumerate(names[1:], start=1):
        seen = np.isfinite(table[:, i])  # terms logged at other steps leave blanks: bridge them
        ax.plot(table[seen, 0], table[seen, i], label=name, lw=1.6 if name == "total" else 0.9)
    values = table[:, 1:][np.isfinite(table[:, 1:])]
    if values.size and (values > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out)


def write_assets(job: Job) -> None:
    """(Re)write <job>/gallery/trajectory.webp and loss.png, dropping stale ones without input."""
    gallery = job.path / "gallery"
    frames = list_frames(job.path / "frames")
    losses = job.path / "stats" / "losses.csv"
    _refresh(gallery / "trajectory.webp", lambda out: save_trajectory(frames, out), bool(frames))
    _refresh(gallery / "loss.png", lambda out: plot_losses(losses, out), losses.exists())


def _refresh(target: Path, make: Callable[[Path], None], has_input: bool) -> None:
    target.unlink(missing_ok=True)
    if not has_input:
        return
    try:
        make(target)
    except (OSError, ValueError) as e:  # a half-written frame or csv must not sink the page
        target.unlink(missing_ok=True)
        print(f"gallery: skipped {target}: {e}", file=sys.stderr)


def render_card(job: Job, base: Path, common: set[str]) -> str:
    """One job's card; links are relative to `base`, the folder holding index.html."""
    name, gallery, mp4 = f"job {job.number}", job.path / "gallery", job.path / "trajectory.mp4"
    final = _image(job.path / "final.png", base, f"final image of {name}")
    trajectory = _image(gallery / "trajectory.webp", base, f"trajectory of {name}", href=mp4)
    overrides = "".join(
        ('<li class="common">' if o in common else "<li>") + f"{html.escape(o)}</li>"
        for o in job.overrides
    )
    error = ""
    if not job.ok:
        error = f'<p class="error">{html.escape(job.error or "")}</p>'
        if (job.path / "error.txt").exists():
            error += f'<p><a href="{_href(job.path / "error.txt", base)}">error.txt</a></p>'
    return CARD.substitute(
        status="ok" if job.ok else "failed",
        job=job.number,
        score="" if job.score is None else repr(job.score),
        score_text="–" if job.score is None else f"{job.score:.4g}",
        seed=html.escape(str(job.seed)),
        pictures=final + trajectory,
        loss=_image(gallery / "loss.png", base, f"losses of {name}"),
        overrides=overrides,
        error=error,
    )


def _href(path: Path, base: Path) -> str:
    return html.escape(quote(Path(os.path.relpath(path, base)).as_posix()))


def _image(path: Path, base: Path, alt: str, href: Path | None = None) -> str:
    if not path.exists():
        return ""
    alt = html.escape(alt)
    link = _href(href if href is not None and href.exists() else path, base)
    img = f'<img src="{_href(path, base)}" alt="{alt}" title="{alt}" loading="lazy">'
    return f'<a href="{link}">{img}</a>'


def build_gallery(sweep_dir: Path, out: Path | None = None) -> Path:
    """Write per-job thumbnails and loss plots, then `out` (default <sweep_dir>/index.html)."""
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(d) for d in find_jobs(sweep_dir)]
    out = Path(out) if out is not None else sweep_dir / "index.html"
    for job in jobs:
        write_assets(job)
    common = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    failed = sum(not j.ok for j in jobs)
    count = f"{len(jobs)} job" + ("s" if len(jobs) != 1 else "")
    summary = f"{count} · {len(jobs) - failed} ok · {failed} failed · {sweep_dir}"
    where = sweep_dir.resolve()  # outputs/[multirun/]<date>/<time>: name it by date and time
    kind = "run" if jobs[0].path == sweep_dir else "sweep"
    page = PAGE.substitute(
        title=html.escape(f"genart {kind} {where.parent.name}/{where.name}"),
        summary=html.escape(summary),
        cards="\n".join(render_card(j, out.parent, common) for j in jobs),
    )
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genart.gallery", description=__doc__)
    parser.add_argument(
        "sweep_dir", type=Path, help="e.g. outputs/multirun/2024-05-01/12-00-00 (or a single run's)"
    )
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    args = parser.parse_args(argv)
    try:
        index = build_gallery(args.sweep_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(index)
    if args.open:
        webbrowser.open(index.resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main())
