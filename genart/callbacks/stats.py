"""stats/: loss terms per logged step, best-match wins per step, positional weight per x-bin.

Counts accumulate on the device every step and are read back only on logging steps (no host
synchronisation in the hot path). On every save step the positional sums go to
stats/positional_state.pt and positional.csv is rewritten, so an interrupted run keeps its
statistics and a resumed one continues them from the checkpoint's step.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from genart.callbacks import Callback


class StatsCallback(Callback):
    def __init__(self, x_bins: int = 16):
        self.x_bins = x_bins

    def on_start(self, run) -> None:
        self.dir = Path(run.run_dir) / "stats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.texts = run.schedule.texts
        self.grouped = run.schedule.grouped
        self.select = run.schedule.select
        self.wins: list[tuple[int, torch.Tensor]] = []  # (step, (P,) views won) not yet written
        self.best_views: list[tuple[int, torch.Tensor]] = []  # select=all: best view per prompt
        self.pos_sum = self.pos_count = None
        if run.start_step:
            self._load_positional(run.start_step, run.env["device"])
        truncate_csv(self.dir / "losses.csv", run.start_step)
        truncate_csv(self.dir / "best_match.csv", run.start_step)

    def on_step(self, state: dict) -> None:
        self._accumulate(state)
        if state["log"]:
            self._write_losses(state)
            self._flush_wins()
        if state["save"]:
            self._save_positional(state["step"])
            self._write_positional()

    def on_end(self, state: dict) -> None:
        self._flush_wins()  # positional.csv was written at the last step, always a save step
        self._write_totals()

    # -- accumulation (on device) -------------------------------------------------------------
    def _accumulate(self, state: dict) -> None:
        views, W = state["views"], state["W"].detach()
        detail = ~views.composition
        if state["winners"] is not None:
            won = state["winners"][detail]
            self.wins.append((state["step"], torch.bincount(won, minlength=len(self.texts))))
            if self.select == "all" and state.get("sims") is not None:
                self.best_views.append((state["step"], state["sims"][detail].argmax(0)))
        bins = ((views.centres[detail, 0] + 1) / 2 * self.x_bins).long().clamp(0, self.x_bins - 1)
        if self.pos_sum is None:
            self.pos_sum = W.new_zeros(self.x_bins, W.shape[1])
            self.pos_count = W.new_zeros(self.x_bins)
        self.pos_sum.index_add_(0, bins, W[detail].abs())
        self.pos_count.index_add_(0, bins, torch.ones_like(bins, dtype=W.dtype))

    # -- resume -------------------------------------------------------------------------------
    def _save_positional(self, step: int) -> None:
        if self.pos_sum is not None:
            state = {"step": step, "sum": self.pos_sum.cpu(), "count": self.pos_count.cpu()}
            torch.save(state, self.dir / "positional_state.pt")

    def _load_positional(self, step: int, device: str) -> None:
        path = self.dir / "positional_state.pt"
        if not path.exists():
            return
        state = torch.load(path, weights_only=True, map_location=device)  # where W accumulates
        if state["step"] == step and state["sum"].shape[0] == self.x_bins:
            self.pos_sum, self.pos_count = state["sum"], state["count"]

    # -- writing ------------------------------------------------------------------------------
    def _write_losses(self, state: dict) -> None:
        terms = {k: float(v.detach()) for k, v in state["terms"].items()}
        row = {"step": state["step"], "total": float(state["total"].detach()), **terms}
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

    def _write_totals(self) -> None:
        path = self.dir / "best_match.csv"
        if not self.grouped or not path.exists():
            return
        totals = {self.texts[k]: 0 for k in self.grouped}
        with path.open() as f:
            for row in csv.DictReader(f):
                totals[row["prompt"]] = totals.get(row["prompt"], 0) + int(row["views_won"])
        all_wins = sum(totals.values()) or 1
        with (self.dir / "best_match_totals.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt", "views_won", "share"])
            for text, n in sorted(totals.items(), key=lambda kv: -kv[1]):
                writer.writerow([text, n, f"{n / all_wins:.4f}"])

    def _write_positional(self) -> None:
        if self.pos_sum is None:
            return
        mean = (self.pos_sum / self.pos_count[:, None].clamp_min(1)).cpu()
        with (self.dir / "positional.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["x_bin_centre", "views", *self.texts])
            for b in range(self.x_bins):
                centre = -1 + (2 * b + 1) / self.x_bins
                writer.writerow(
                    [
                        f"{centre:.3f}",
                        int(self.pos_count[b]),
                        *(f"{v:.4f}" for v in mean[b].tolist()),
                    ]
                )


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_csv(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step (they will be logged again)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step] if step else []
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
