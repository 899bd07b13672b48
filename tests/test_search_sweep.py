"""`python -m genart +search=unseen hydra/sweeper=evolve -m` on tiny models (slow tier): the
sweep dir, search.db, W&B curves, prompts that reach jobs exactly, lost jobs, kill and resume."""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
from pathlib import Path

import pytest

from genart.overrides import quote
from genart.search.decoding import image_seed
from genart.search.store import counts, read_evaluations
from tests.conftest import REPO, cli, compose

pytestmark = pytest.mark.slow
SEARCH = [
    "+search=unseen", "hydra/sweeper=evolve",
    "generator=vqgan_tiny", "guide=clip_tiny", "scorer=nima_tiny",
    "size=[32,32]", "steps=1", "cutouts.cutn=2", "save_every=1",
    "search.population=3", "search.repeats=2", "search.generations=3",
]  # fmt: skip
HOSTILE = [
    "a, b", "c: 0.5", "x | y", "it's", 'say "hi"', "back\\slash\\", "a=b", "[1,2]",
    "{k: v}", "café ñ", "range(0,3)", "$HOME", "{pieces}", "%s", "a=1,b=2",
]  # fmt: skip


def search(*args, cwd, env=None):
    out = cli(
        "genart", *args, "-m", cwd=cwd, env={"PYTHONPATH": str(REPO), **(env or {})}, timeout=1200
    )
    dirs = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    return out, dirs[-1] if dirs else None


def rows(sweep_dir: Path) -> list[tuple]:
    fields = ("generation", "individual", "repeat", "prompt", "seed", "score", "fitness", "status")
    return [tuple(r[f] for f in fields) for r in read_evaluations(sweep_dir / "search.db")]


def genomes(sweep_dir: Path) -> list[tuple]:
    db = sqlite3.connect(sweep_dir / "search.db")
    try:
        return db.execute(
            "SELECT generation, individual, genome, fitness FROM individuals"
        ).fetchall()
    finally:
        db.close()


def rendered(run_dir: Path) -> tuple[str, int]:
    """The prompt and seed a job rendered, from its final.png's text chunks (genart.render)."""
    from PIL import Image

    with Image.open(Path(run_dir) / "final.png") as png:
        return png.text["prompts"], int(png.text["seed"])


def wandb_records(path: Path):
    """The protobuf records of an offline .wandb file: W&B writes LevelDB's log format (32 KiB
    blocks; a 7-byte record header: crc32c, length, type full/first/middle/last) after a 7-byte
    ":W&B" file header. Written out here: wandb 0.31 ships no Python reader."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, at, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        if kind == 0:
            break
        parts += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # full, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of every offline W&B run file under run_dir, in the order written."""
    found = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                found.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
    return found


def test_prompts_reach_the_job_exactly_whatever_they_contain():
    """Each hostile text as the search passes it reaches the job's prompt schedule as itself:
    Hydra's parser and genart's prompt syntax both see it."""
    from hydra.utils import instantiate

    for text in HOSTILE:
        cfg = compose(["++prompts.text=null", f"++prompts.literal={quote(text)}"])
        assert instantiate(cfg.prompts, _convert_="all").texts == [text.strip()], text


def test_a_three_generation_search_records_everything(tmp_path):
    out, sweep_dir = search(*SEARCH, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert counts(sweep_dir / "search.db") == {
        "individuals": 9,
        "evaluations": 18,
        "generations": 3,
    }
    evaluations = read_evaluations(sweep_dir / "search.db")
    assert all(r["status"] == "ok" and (sweep_dir / r["image"]).is_file() for r in evaluations)
    assert len({r["prompt"] for r in evaluations}) > 9, "repeats draw different prompts"
    assert len({r["score"] for r in evaluations}) > 9, "the images differ"
    first = {tuple(json.loads(g)) for gen, _, g, _ in genomes(sweep_dir) if gen == 0}
    last = {tuple(json.loads(g)) for gen, _, g, _ in genomes(sweep_dir) if gen == 2}
    assert first != last, "the optimiser moved the population"
    for r in evaluations:  # what the job rendered is what the database says
        assert rendered(sweep_dir / r["run_dir"]) == (r["prompt"], r["seed"])
        result = json.loads((sweep_dir / r["run_dir"] / "result.json").read_text())
        assert result["score"] == r["score"] and result["scorer"]["name"] == "nima_tiny"
    # the W&B search run: one curve point per generation, equal to the database's
    db = sqlite3.connect(sweep_dir / "search.db")
    told = db.execute("SELECT generation, mean_fitness, best_fitness FROM generations").fetchall()
    db.close()
    logged = [h for h in wandb_history(sweep_dir) if "fitness/mean" in h]
    assert [(h["generation"], h["fitness/mean"], h["fitness/best"]) for h in logged] == [
        tuple(t) for t in told
    ]
    assert all(h[f"images/generation_{g}/nrows"] == 6 for g, h in enumerate(logged)), "a table each"
    print(
        "W&B curves:",
        logged and [(h["generation"], h["fitness/mean"], h["fitness/best"]) for h in logged],
    )


def test_hostile_pieces_run_as_written(tmp_path):
    pieces = "[" + ",".join(quote(p) for p in HOSTILE) + "]"
    out, sweep_dir = search(
        *SEARCH[:-3], "logger=none", "search.population=2", "search.repeats=1",
        "search.generations=1", "search.k=15", "search.init=0.9", f"search.pieces={pieces}",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    evaluations = read_evaluations(sweep_dir / "search.db")
    assert [r["status"] for r in evaluations] == ["ok", "ok"], evaluations
    for r in evaluations:
        assert r["prompt"] == ", ".join(HOSTILE[i] for i in r["pieces"])
        assert rendered(sweep_dir / r["run_dir"]) == (r["prompt"], r["seed"])


def test_an_interpolation_in_a_piece_is_refused_in_one_paragraph(tmp_path):
    out, _ = search(*SEARCH, "logger=none", "search.pieces=['a', '\\${oc.env:HOME}']", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "starts an OmegaConf interpolation" in out.stderr and "Traceback" not in out.stderr


def test_a_job_lost_under_joblib_counts_the_worst_and_the_search_goes_on(tmp_path):
    victim = image_seed(0, 0, 1, 0)
    out, sweep_dir = search(
        *SEARCH[:-3], "logger=none", "search.population=2", "search.repeats=2",
        "search.generations=2", "hydra/launcher=joblib_safe", "hydra.launcher.n_jobs=2",
        "+callbacks.killer._target_=tests.killer.KillAtStep", "+callbacks.killer.seed=${seed}",
        f"+callbacks.killer.victim={victim}",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    evaluations = read_evaluations(sweep_dir / "search.db")
    lost = [r for r in evaluations if r["seed"] == victim]
    assert len(lost) == 1 and lost[0]["status"] == "failed"
    assert "killed by signal 9" in lost[0]["error"] and lost[0]["fitness"] == 1.0  # nima's worst
    assert len(evaluations) == 8 and sum(r["status"] == "ok" for r in evaluations) == 7


def test_a_search_killed_mid_generation_resumes_on_the_same_trajectory(tmp_path):
    """kill -9 of the search's own process (the basic launcher runs jobs in it) during a job of
    generation 1; `hydra.sweeper.resume=<dir>` then finishes it. Every row equals an
    uninterrupted search's, and no finished evaluation rendered again."""
    victim = image_seed(0, 1, 1, 0)
    marker = tmp_path / "killed-once"
    TWO = [*SEARCH[:-1], "search.generations=2"]  # noqa: N806
    killer = [
        "logger=none",
        "+callbacks.killer._target_=tests.search_killer.KillOnce", "+callbacks.killer.seed=${seed}",
        f"+callbacks.killer.victim={victim}", f"+callbacks.killer.marker={marker}",
    ]  # fmt: skip
    whole_dir = tmp_path / "whole"
    whole_dir.mkdir()
    marker.touch()  # the uninterrupted search: the killer stands down
    out, whole = search(*TWO, *killer, cwd=whole_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    marker.unlink()

    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    out, killed = search(*TWO, *killer, cwd=killed_dir)
    assert out.returncode == -9, out.stderr[-4000:]
    before = read_evaluations(killed / "search.db")
    assert [r["generation"] for r in before if r["status"] == "launched"] == [1] * 6
    assert sum(r["status"] == "ok" for r in before) == 6  # generation 0
    finished = [r for r in before if (killed / r["run_dir"] / "result.json").is_file()]
    assert len(finished) == 6 + 2, "2 jobs of generation 1 finished before the kill"
    out, again = search(*TWO, *killer, f"hydra.sweeper.resume={killed}", cwd=killed_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    assert rows(killed) == rows(whole), "the resumed search took the uninterrupted one's path"
    assert genomes(killed) == genomes(whole)
    assert len({g for _, _, g, _ in genomes(whole)}) == 6, "the search moved"
    images = sorted(killed.glob("*/final.png"))
    assert len(images) == 12, "each evaluation rendered once (the killed job's dir has none)"
    assert not math.isnan(sum(r[6] for r in rows(killed)))


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="needs the ray extra: pip install -e '.[ray]'",
)
def test_a_search_runs_its_jobs_on_ray(tmp_path, local_ray):
    out, sweep_dir = search(
        *SEARCH[:-3], "logger=none", "search.population=2", "search.repeats=2",
        "search.generations=2", *local_ray,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert counts(sweep_dir / "search.db") == {"individuals": 4, "evaluations": 8, "generations": 2}
    assert {r["status"] for r in read_evaluations(sweep_dir / "search.db")} == {"ok"}
