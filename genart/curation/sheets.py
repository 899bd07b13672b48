"""What curation writes besides the book: clusters.csv, one contact sheet per style cluster, and
the UMAP scatter plot."""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from genart.curation.clusters import NOISE

CSV_COLUMNS = ("image", "score", "prompt", "style_cluster", "semantic_cluster", "kept")
SEARCH_COLUMNS = ("generation", "individual", "repeat")  # images from a search's search.db

SHEET = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: .8rem; }}
figure {{ margin: 0; }} img {{ width: 100%; height: auto; display: block; }}
figcaption {{ font-size: 12px; overflow-wrap: anywhere; }} .kept {{ outline: 3px solid #2a2; }}
</style></head>
<body><h1>{title}</h1><p>{summary}</p><div class="grid">
{figures}
</div></body></html>
"""

FIGURE = """<figure class="{kept}"><a href="{href}"><img src="{href}" alt="{prompt}"></a>
<figcaption>{score:.3f} · {prompt}</figcaption></figure>"""


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """One row per image: CSV_COLUMNS, then SEARCH_COLUMNS when the rows carry them; clusters as
    DBSCAN labels (-1 = noise, blank = not clustered: outside the chosen style clusters)."""
    extra = tuple(c for c in SEARCH_COLUMNS if any(c in row for row in rows))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS + extra, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def link(image: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from a page in page_dir to the image."""
    return quote(Path(os.path.relpath(image.resolve(), page_dir.resolve())).as_posix())


def write_sheets(out_dir: Path, rows: Sequence[dict]) -> list[Path]:
    """style_<k>.html per style cluster (noise: style_noise.html), best score first."""
    pages = []
    for label in sorted({row["style_cluster"] for row in rows}):
        members = sorted(
            (r for r in rows if r["style_cluster"] == label and Path(r["path"]).is_file()),
            key=lambda r: -r["score"],
        )
        name = "noise" if label == NOISE else str(label)
        figures = "\n".join(
            FIGURE.format(
                kept="kept" if r["kept"] else "",
                href=link(Path(r["path"]), out_dir),
                prompt=html.escape(r["prompt"]),
                score=r["score"],
            )
            for r in members
        )
        title = f"style cluster {name}" if label != NOISE else "no style cluster (DBSCAN noise)"
        summary = f"{len(members)} images; outlined: kept after semantic deduplication"
        page = out_dir / f"style_{name}.html"
        page.write_text(SHEET.format(title=title, summary=summary, figures=figures), "utf-8")
        pages.append(page)
    return pages


def write_scatter(path: Path, points: np.ndarray, labels: np.ndarray, title: str) -> Path:
    """The 2-d UMAP points coloured by cluster (noise in grey)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    noise = labels == NOISE
    ax.scatter(*points[noise].T, c="lightgrey", s=8, label="noise")
    scatter = ax.scatter(*points[~noise].T, c=labels[~noise], cmap="tab20", s=8)
    if (~noise).any():
        fig.colorbar(scatter, ax=ax, label="cluster")
    ax.set(title=title, xlabel="UMAP 1", ylabel="UMAP 2")
    fig.savefig(path)
    plt.close(fig)
    return path
