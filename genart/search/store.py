"""search.db: every individual and every evaluation of a search, in the sweep dir (SQLite).

Only the sweeper writes it, each change in one transaction (`with self.db:` commits or rolls
back), so a search killed at any moment leaves a database that says exactly what was done:

- `settings`: the search's config, its command-line arguments and seed (a resume must match);
- `individuals`: each generation's genomes, as asked from the optimiser, and their fitness once
  told (the mean of their repeats);
- `evaluations`: one row per repeat: the sampled prompt, its pieces, the image seed, the job
  number and run dir, the image, the scorer's score, the fitness it counted for, and
  status `launched` → `ok` | `failed` (with its error);
- `generations`: one row per generation told to the optimiser, with its mean and best fitness.

Readers (genart.curate, the studio) open it read-only: `read_evaluations(path)`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

FILENAME = "search.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS individuals (
    generation INTEGER NOT NULL, individual INTEGER NOT NULL,
    genome TEXT NOT NULL,            -- JSON list of probabilities, one per piece
    fitness REAL,                    -- mean fitness of its repeats, once told
    PRIMARY KEY (generation, individual));
CREATE TABLE IF NOT EXISTS evaluations (
    generation INTEGER NOT NULL, individual INTEGER NOT NULL, repeat INTEGER NOT NULL,
    prompt TEXT NOT NULL, pieces TEXT NOT NULL,   -- pieces: JSON list of piece indices
    seed INTEGER NOT NULL,           -- the image seed (genart's seed=)
    job INTEGER, run_dir TEXT, image TEXT,  -- relative to the sweep dir (this file's folder)
    score REAL,                      -- the scorer's score; NULL when the job failed or was lost
    fitness REAL,                    -- what the search counted: the score, or the worst
    status TEXT NOT NULL,            -- launched | ok | failed
    error TEXT,
    PRIMARY KEY (generation, individual, repeat));
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY, mean_fitness REAL NOT NULL, best_fitness REAL NOT NULL,
    best_individual INTEGER NOT NULL, evaluations INTEGER NOT NULL, failed INTEGER NOT NULL);
"""


class SearchStore:
    """The sweeper's handle on search.db."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.row_factory = sqlite3.Row
        with self.db:
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- settings ------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT * FROM settings")}

    def save_settings(self, values: dict) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO settings VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # -- a generation --------------------------------------------------------------------------
    def genomes(self, generation: int) -> list[list[float]]:
        rows = self.db.execute(
            "SELECT genome FROM individuals WHERE generation = ? ORDER BY individual", (generation,)
        )
        return [json.loads(r["genome"]) for r in rows]

    def add_individuals(self, generation: int, genomes: Iterable[list[float]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO individuals (generation, individual, genome) VALUES (?, ?, ?)",
                [(generation, i, json.dumps(list(map(float, g)))) for i, g in enumerate(genomes)],
            )

    def evaluations(self, generation: int) -> dict[tuple[int, int], dict]:
        rows = self.db.execute("SELECT * FROM evaluations WHERE generation = ?", (generation,))
        return {(r["individual"], r["repeat"]): dict(r) for r in rows}

    def launch(self, rows: list[dict]) -> None:
        """Rows about to run as jobs: recorded first, so a killed search knows what was out."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO evaluations (generation, individual, repeat, prompt, "
                "pieces, seed, job, run_dir, status) VALUES (:generation, :individual, :repeat, "
                ":prompt, :pieces, :seed, :job, :run_dir, 'launched')",
                [{**r, "pieces": json.dumps(r["pieces"])} for r in rows],
            )

    def finish(self, rows: list[dict]) -> None:
        with self.db:
            self.db.executemany(
                "UPDATE evaluations SET image = :image, score = :score, fitness = :fitness, "
                "status = :status, error = :error WHERE generation = :generation AND "
                "individual = :individual AND repeat = :repeat",
                rows,
            )

    def tell(self, generation: int, fitness: list[float], failed: int, evaluations: int) -> None:
        """The generation's fitness, as told to the optimiser: one transaction."""
        best = max(range(len(fitness)), key=fitness.__getitem__)
        with self.db:
            self.db.executemany(
                "UPDATE individuals SET fitness = ? WHERE generation = ? AND individual = ?",
                [(f, generation, i) for i, f in enumerate(fitness)],
            )
            self.db.execute(
                "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                (generation, sum(fitness) / len(fitness), fitness[best], best, evaluations, failed),
            )

    def told(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM generations ORDER BY generation")]

    def fitness(self, generation: int) -> list[float]:
        rows = self.db.execute(
            "SELECT fitness FROM individuals WHERE generation = ? ORDER BY individual",
            (generation,),
        )
        return [r["fitness"] for r in rows]

    def succeeded(self) -> bool:
        """Whether any evaluation of this search has finished ok."""
        return (
            self.db.execute("SELECT 1 FROM evaluations WHERE status = 'ok' LIMIT 1").fetchone()
            is not None
        )

    def next_job(self) -> int:
        row = self.db.execute("SELECT MAX(job) AS last FROM evaluations").fetchone()
        return 0 if row["last"] is None else int(row["last"]) + 1


def read_evaluations(path: Path) -> list[dict]:
    """Every evaluation of a search.db, read-only (never locks out the sweeper for long)."""
    db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "SELECT * FROM evaluations ORDER BY generation, individual, repeat"
        ).fetchall()
    finally:
        db.close()
    return [{**dict(r), "pieces": json.loads(r["pieces"])} for r in rows]


def counts(path: Path) -> dict[str, int]:
    """Row count of each table (the README's and the closing note's check)."""
    db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        return {
            t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
            for t in ("individuals", "evaluations", "generations")
        }
    finally:
        db.close()
