"""stats/: loss terms per logged step, best-match wins per step, positional weight per x-bin.

Counts accumulate on the device every step and are read back only on logging steps (no host
synchronisation in the hot path). On every save step positional.csv is rewritten and the state that
the CSVs cannot hold (positional sums, best-match wins not yet written) goes into checkpoint.pt,
so a resumed run drops the rows written after the checkpoint and writes them again exactly once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from genart.callbacks import Callback
from genart.files import load_untrusted, raise_if_disk_full, unreadable, write_atomic


class StatsCallback(Callback):
    def __init__(self, x_bins: int = 16):
        self.x_bins = x_bins
        self.restored = None, None  # (stats state, checkpoint path) on resume

    def on_start(self, run) -> None:
        self.dir = Path(run.run_dir) / "stats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.texts = run.schedule.texts
        self.grouped = run.schedule.grouped
        self.select = run.schedule.select
        self.wins: list[tuple[int, torch.Tensor]] = []  # (step, (P,) views won) not yet written
        self.best_views: list[tuple[int, torch.Tensor]] = []  # select=all: best view per prompt
        self.pos_sum = self.pos_count = None
        self.observed = run.start_step
        logged = run.start_step
        if run.start_step:
            logged = self._restore(run.start_step, run.env["device"])
        truncate_csv(self.dir / "losses.csv", run.start_step)
        truncate_csv(self.dir / "best_match.csv", logged)

    def on_step(self, report: dict) -> None:
        self._observe(report)

    def on_end(self, report: dict) -> None:
        """Adds `report["best_match_totals"]` (header row, then one row per prompt) when it has one."""
        self._flush_wins()  # positional.csv was written at the last step, always a save step
        totals = self._write_totals()
        if totals:
            report["best_match_totals"] = totals

    def _observe(self, report: dict) -> None:
        """Once per step, whichever asks first: the checkpoint (for this step's report) or the loop."""
        if report["step"] == self.observed:
            return
        self.observed = report["step"]
        self._accumulate(report)
        if report["log"]:
            self._write_losses(report)
            self._flush_wins()
        if report["save"]:
            self._write_positional()

    # -- accumulation (on device) -------------------------------------------------------------
    def _accumulate(self, report: dict) -> None:
        views, W = report["views"], report["W"].detach()
        detail = ~views.composition
        if report["winners"] is not None:
            won = report["winners"][detail]
            self.wins.append((report["step"], torch.bincount(won, minlength=len(self.texts))))
            if self.select == "all" and report.get("sims") is not None:
                self.best_views.append((report["step"], report["sims"][detail].argmax(0)))
        bins = ((views.centres[detail, 0] + 1) / 2 * self.x_bins).long().clamp(0, self.x_bins - 1)
        if self.pos_sum is None:
            self.pos_sum = W.new_zeros(self.x_bins, W.shape[1])
            self.pos_count = W.new_zeros(self.x_bins)
        self.pos_sum.index_add_(0, bins, W[detail].abs())
        self.pos_count.index_add_(0, bins, torch.ones_like(bins, dtype=W.dtype))

    # -- resume -------------------------------------------------------------------------------
    def checkpoint_state(self, report: dict) -> dict:
        """After this step: positional sums and the wins not yet in best_match.csv."""
        self._observe(report)
        cpu = (lambda t: None) if self.pos_sum is None else (lambda t: t.cpu())
        return {
            "sum": cpu(self.pos_sum),
            "count": cpu(self.pos_count),
            "wins": [(step, counts.cpu()) for step, counts in self.wins],
            "best_views": [(step, best.cpu()) for step, best in self.best_views],
        }

    def load_checkpoint_state(self, saved: dict | None, path: Path) -> None:
        self.restored = (saved, path)

    def _restore(self, step: int, device) -> int:
        """Load the saved state; return the last step whose best-match rows were already written."""
        saved, path = self.restored
        if saved is None:  # a checkpoint from before its callbacks' state was saved in it
            return self._load_positional(step, device)
        try:
            self._restore_from(saved, step, device)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            reason = f"its stats state does not fit this run ({err})"
            raise unreadable(path, "checkpoint", reason) from None
        return self.wins[0][0] - 1 if self.wins else step

    def _restore_from(self, saved: dict, step: int, device) -> None:
        P = len(self.texts)
        pos = check_positional(saved["sum"], saved["count"], self.x_bins, P)
        self.pos_sum, self.pos_count = (None if t is None else t.to(device) for t in pos)
        self.wins = [(int(s), check_counts(c, P).to(device)) for s, c in saved["wins"]]
        self.best_views = [(int(s), check_counts(b, P).to(device)) for s, b in saved["best_views"]]
        steps = [s for s, _ in self.wins]
        if steps != sorted(set(steps)) or not all(0 < s <= step for s in steps):
            raise ValueError(f"best-match wins are for steps {steps}, not steps up to {step}")
        if self.best_views and [s for s, _ in self.best_views] != steps:
            raise ValueError("best views and wins are for different steps")

    def _load_positional(self, step: int, device) -> int:
        """Positional sums from the stats/positional_state.pt that older checkpoints came with."""
        path = self.dir / "positional_state.pt"
        if not path.exists():
            return step
        saved_stats = load_untrusted(path, "statistics file")
        try:
            if saved_stats["step"] == step:
                pos = check_positional(
                    saved_stats["sum"], saved_stats["count"], self.x_bins, len(self.texts)
                )
                self.pos_sum, self.pos_count = (t.to(device) for t in pos)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
            raise unreadable(path, "statistics file", f"it does not fit this run ({err})") from None
        return step

    # -- writing ------------------------------------------------------------------------------
    def _write_losses(self, report: dict) -> None:
        terms = {k: float(v.detach()) for k, v in report["terms"].items()}
        row = {"step": report["step"], "total": float(report["total"].detach()), **terms}
        append_csv(self.dir / "losses.csv", row)

    def _flush_wins(self) -> None:
        for (step, counts), best in zip(self.wins, self._best_views_or_none(), strict=True):
            for k in self.grouped:
                row = {"step": step, "prompt": self.texts[k], "views_won": int(counts[k])}
                if best is not None:
                    row["best_view"] = int(best[k])
                append_csv(self.dir / "best_match.csv", row)
        self.wins, self.best_views = [], []

    def _best_views_or_none(self):
        return [b for _, b in self.best_views] if self.best_views else [None] * len(self.wins)

    def _write_totals(self) -> list[list] | None:
        path = self.dir / "best_match.csv"
        if not self.grouped or not path.exists():
            return None
        totals = {self.texts[k]: 0 for k in self.grouped}
        with path.open() as f:
            for row in csv.DictReader(f):
                totals[row["prompt"]] = totals.get(row["prompt"], 0) + int(row["views_won"])
        all_wins = sum(totals.values()) or 1
        rows = [["prompt", "views_won", "share"]]
        rows += [
            [t, n, f"{n / all_wins:.4f}"] for t, n in sorted(totals.items(), key=lambda kv: -kv[1])
        ]
        write_csv(self.dir / "best_match_totals.csv", rows)
        return rows

    def _write_positional(self) -> None:
        if self.pos_sum is None:
            return
        mean = (self.pos_sum / self.pos_count[:, None].clamp_min(1)).cpu()
        rows = [["x_bin_centre", "views", *self.texts]]
        for b in range(self.x_bins):
            centre = -1 + (2 * b + 1) / self.x_bins
            values = (f"{v:.4f}" for v in mean[b].tolist())
            rows.append([f"{centre:.3f}", int(self.pos_count[b]), *values])
        write_csv(self.dir / "positional.csv", rows)


def check_positional(pos_sum, pos_count, x_bins: int, P: int):
    """(x_bins, P) float sums and (x_bins,) float counts, or both None (nothing accumulated yet)."""
    if pos_sum is None and pos_count is None:
        return None, None
    for name, t, shape in (("sum", pos_sum, (x_bins, P)), ("count", pos_count, (x_bins,))):
        if not torch.is_tensor(t) or tuple(t.shape) != shape or not t.is_floating_point():
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"positional {name} is {got}, this run's is {shape}")
    return pos_sum, pos_count


def check_counts(t, P: int):
    """(P,) integer tensor: views won or best view, per prompt."""
    if not torch.is_tensor(t) or tuple(t.shape) != (P,) or t.is_floating_point():
        raise ValueError(f"a best-match entry is not {P} integers")
    return t


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    try:
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
    except OSError as err:
        raise_if_disk_full(err, path)
        raise


def write_csv(path: Path, rows: list[list]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    write_atomic(path, write)


def truncate_csv(path: Path, step: int) -> None:
    """On resume, drop rows logged after `step` (they will be logged again) and a torn last line."""
    if not path.exists():
        return
    data = path.read_bytes()
    text = data[: data.rfind(b"\n") + 1].decode()  # a kill mid-append can leave half a row
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        path.unlink()
        return
    keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    write_csv(path, [rows[0], *keep])
