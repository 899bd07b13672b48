"""studio.db: the studio's own record (SQLite) in a `studio/` dir beside the sweeps.

It holds the evolutionary search's schema (genart.search.store.SCHEMA, created by SearchStore)
plus the studio's tables:

- `lineage`: one row per child run: the parents it was bred from, the operator, the click
  point (image pixels; NULL when none), its seed and generation;
- `picks`: each "Next generation" the user pressed: favourites, click, children asked for.

A search's own search.db is only ever read, read-only (`read_search_prompts`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from genart.search.store import FILENAME as SEARCH_DB
from genart.search.store import SearchStore, read_evaluations

FILENAME = "studio.db"
OPERATORS = ("crossover", "local", "plain", "seed")
STUDIO_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage (
    child TEXT PRIMARY KEY,          -- the child's run dir (resolved)
    parents TEXT NOT NULL,           -- JSON list of run dirs
    operator TEXT NOT NULL CHECK (operator IN ('crossover', 'local', 'plain', 'seed')),
    click_x REAL, click_y REAL,      -- image pixels; NULL without a click
    seed INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    created REAL NOT NULL);          -- unix time
CREATE TABLE IF NOT EXISTS picks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep TEXT NOT NULL,             -- the sweep dir the user picked from (resolved)
    favourites TEXT NOT NULL,        -- JSON list of run dirs
    click TEXT,                      -- JSON {run, x, y} or NULL
    children INTEGER NOT NULL,
    created REAL NOT NULL);
"""


def studio_dir(sweep_dir: Path) -> Path:
    """`studio/` beside the sweep (its parent holds the sweeps the studio breeds)."""
    return Path(sweep_dir).resolve().parent / "studio"


class StudioStore(SearchStore):
    """The studio's handle on studio.db: the search schema plus lineage and picks."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.db:
            self.db.executescript(STUDIO_SCHEMA)

    def add_lineage(
        self,
        child: Path,
        parents: list[Path],
        operator: str,
        seed: int,
        generation: int,
        click: tuple[float, float] | None = None,
    ) -> None:
        x, y = click if click is not None else (None, None)
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO lineage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key(child),
                    json.dumps([key(p) for p in parents]),
                    operator,
                    x,
                    y,
                    seed,
                    generation,
                    time.time(),
                ),
            )

    def lineage(self, child: Path) -> dict | None:
        row = self.db.execute("SELECT * FROM lineage WHERE child = ?", (key(child),)).fetchone()
        return None if row is None else {**dict(row), "parents": json.loads(row["parents"])}

    def add_picks(
        self, sweep: Path, favourites: list[Path], click: dict | None, children: int
    ) -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO picks (sweep, favourites, click, children, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    key(sweep),
                    json.dumps([key(f) for f in favourites]),
                    None if click is None else json.dumps(click),
                    children,
                    time.time(),
                ),
            )
        return int(cur.lastrowid)

    def picks(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM picks ORDER BY id").fetchall()
        return [
            {
                **dict(r),
                "favourites": json.loads(r["favourites"]),
                "click": json.loads(r["click"]) if r["click"] else None,
            }
            for r in rows
        ]


def key(run_dir: Path) -> str:
    """A run dir as stored: resolved, so one run has one key however it was named."""
    return str(Path(run_dir).resolve())


def read_search_prompts(sweep_dir: Path) -> dict[str, str]:
    """{resolved run dir: the exact prompt the search sampled} from the sweep's search.db, read
    read-only; {} when the sweep has none or it cannot be read."""
    path = Path(sweep_dir) / SEARCH_DB
    if not path.is_file():
        return {}
    try:
        rows = read_evaluations(path)
    except sqlite3.Error:
        return {}
    return {key(Path(sweep_dir) / r["run_dir"]): r["prompt"] for r in rows if r["run_dir"]}
