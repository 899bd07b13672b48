"""The one reader of a sweep's folder: its numbered job folders and each job's outcome.

A job's record is its result.json; a job without one (older genart, or one that died) falls back to
what Hydra and genart left beside it: .hydra/overrides.yaml, .hydra/config.yaml, error.txt,
final.png. Used by the sweep summary and the gallery.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

JOB_MARKERS = ("result.json", "final.png", "error.txt")
DIED = "no result.json (the job died before finishing)"


def numbered(folder: Path) -> list[Path]:
    """The folders named 0, 1, 2… in `folder` (Hydra's job subdirs), in job order."""
    if not folder.is_dir():
        return []
    return sorted((d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()), key=job_number)


def job_number(folder: Path) -> int:
    return int(folder.name) if folder.name.isdigit() else 0  # a single run: job 0


def is_job(folder: Path) -> bool:
    return any((folder / m).exists() for m in JOB_MARKERS) or (folder / ".hydra").is_dir()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders, in job order."""
    return [d for d in numbered(sweep_dir) if is_job(d)]


def read_job(job_dir: Path) -> dict:
    """result.json's fields plus `dir`, with `status` "ok"|"failed", a finite `score` (ok jobs
    only, else None), `seed`, `overrides` (strings) and `error` (one line, failed jobs only)."""
    result, hydra = read_json(job_dir / "result.json"), job_dir / ".hydra"
    error_txt = job_dir / "error.txt"
    finished = (job_dir / "final.png").exists() and not error_txt.exists()
    status = result.get("status") or ("ok" if finished else "failed")
    ok = status == "ok"
    score = result.get("score")
    overrides = result.get("overrides") or read_yaml(hydra / "overrides.yaml") or []
    return {
        **result,
        "dir": job_dir,
        "status": status,
        "score": float(score) if ok and is_finite(score) else None,
        "seed": result.get("seed", (read_yaml(hydra / "config.yaml") or {}).get("seed")),
        "overrides": [str(o) for o in overrides],
        "error": None if ok else error_line(result.get("error"), error_txt, bool(result)),
    }


def is_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def error_line(message: str | None, error_txt: Path, recorded: bool) -> str:
    """The line a traceback ends with (`ValueError: ...`): the recorded error, else error.txt's."""
    if not message and error_txt.exists():
        message = error_txt.read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if lines:
        return lines[-1]
    return "failed without an error message" if recorded or error_txt.exists() else DIED


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or cut short by a killed job
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
