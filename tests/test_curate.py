"""genart.curate: style clusters recover known image families, near-duplicates collapse to the
best-scoring one, --min-score filters, and every output (clusters.csv, contact sheets, UMAP plot,
book.pdf) is written and sound."""

from __future__ import annotations

import csv
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genart import curate
from genart.curation import book, clusters, features, sheets
from tests.conftest import REPO, TINY, cli

FAMILIES = ("stripes", "checkers", "blobs")
STYLE_LAYER = 16  # vgg16().features[:16]: the output of relu3_3 (features[15]), the default


def family_image(family: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A light and a dark random colour laid out as stripes, a checkerboard or three round blobs
    (light on dark throughout: which of the two is lighter is part of a pattern, not its colour)."""
    foreground, background = rng.uniform(0.5, 1, 3), rng.uniform(0, 0.5, 3)
    y, x = np.mgrid[0:size, 0:size]
    shift = rng.integers(12)
    if family == "stripes":
        mask = (x + shift) // 6 % 2 == 0
    elif family == "checkers":
        mask = ((x + shift) // 6 + (y + shift) // 6) % 2 == 0
    else:
        mask = np.zeros((size, size), bool)
        for cx, cy in rng.uniform(10, size - 10, (3, 2)):
            mask |= (x - cx) ** 2 + (y - cy) ** 2 < 10**2
    pixels = np.where(mask[..., None], foreground, background)  # (H, W, 3) in [0, 1]
    return Image.fromarray((pixels * 255).astype(np.uint8))


def write_job(sweep: Path, number: int, image: Image.Image, score: float, prompt: str) -> Path:
    """A job folder as genart writes it: final.png (prompt in its text chunk) and result.json."""
    from PIL import PngImagePlugin

    job = sweep / str(number)
    job.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompts", prompt)
    image.save(job / "final.png", pnginfo=info)
    result = {"status": "ok", "score": score, "scorer": {"name": "nima", "range": [1, 10]},
              "overrides": [f"seed={number}"]}  # fmt: skip
    (job / "result.json").write_text(json.dumps(result))
    return job


def args_for(sweep: Path, *extra: str):
    args = curate.parser().parse_args(
        [str(sweep), "--vgg-random-seed", "0", "--guide", "clip_tiny", *extra]
    )
    args.out = args.out or sweep / "curation"
    return args


@pytest.mark.slow  # ~25 s on 2 busy cores, most of it numba compiling UMAP
def test_style_clusters_recover_families_with_a_random_vgg16(tmp_path: Path):
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    truth = [i % 3 for i in range(60)]
    paths = []
    for i, family in enumerate(truth):
        paths.append(tmp_path / f"{i}.png")
        family_image(FAMILIES[family], rng).save(paths[-1])
    vgg = features.build_vgg16(STYLE_LAYER, random_seed=0)
    embedded = features.embed_style(paths, vgg, size=64, per_image=True)
    params = clusters.ClusterParams()  # the defaults; eps 0.5 and min_dist 0.1 scored ARI 0.38
    labels = clusters.cluster(clusters.project(embedded, params), params)
    ari = adjusted_rand_score(truth, labels)
    print(
        f"style clusters vs families: ARI {ari:.3f} at vgg16().features[:{STYLE_LAYER}] (relu3_3)"
    )
    assert ari >= 0.8


def test_near_duplicates_collapse_to_the_best_scoring_one(tmp_path: Path):
    rng = np.random.default_rng(1)
    scores = {}
    for base in range(3):
        original = np.asarray(family_image(FAMILIES[base], rng, size=64), dtype=np.float32)
        for copy in range(6):
            noisy = original + rng.normal(0, 4, original.shape)  # small noise: ~1.5% of the range
            number = base * 6 + copy
            scores[number] = float(rng.uniform(1, 10))
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            write_job(tmp_path, number, image, scores[number], f"family {FAMILIES[base]}")
    args = args_for(tmp_path, "--min-score", "0", "--style-clusters", "99", "--book-size", "0",
                    "--semantic-min-samples", "3", "--style-min-samples", "3")  # fmt: skip
    curate.curate(args)
    rows = list(csv.DictReader((tmp_path / "curation" / "clusters.csv").open()))
    kept = sorted(int(r["image"].split("/")[0]) for r in rows if r["kept"] == "True")
    best = sorted(max(range(b * 6, b * 6 + 6), key=scores.get) for b in range(3))
    assert kept == best


def test_keep_best_keeps_each_clusters_best_and_every_noise_point():
    labels = np.array([0, 0, 1, 1, -1, 0])
    kept = clusters.keep_best(labels, [1.0, 3.0, 2.0, 1.0, 0.5, 2.0])
    assert kept.tolist() == [False, True, True, False, True, False]


def test_by_size_ranks_clusters_largest_first_and_keeps_noise():
    assert clusters.by_size(np.array([5, 2, 2, -1, 2, 5, 7])).tolist() == [1, 0, 0, -1, 0, 1, 2]


@pytest.fixture
def small_sweep(tmp_path: Path) -> Path:
    """Eight jobs of two families, scores 1…8; job 7's prompt holds HTML."""
    rng = np.random.default_rng(2)
    sweep = tmp_path / "sweep"
    for number in range(8):
        prompt = "<b>bold</b> & <script>x()</script>" if number == 7 else f"prompt {number}"
        image = family_image(FAMILIES[number % 2], rng)
        write_job(sweep, number, image, float(number + 1), prompt)
    failed = sweep / "8"
    failed.mkdir()
    (failed / "result.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    return sweep


def run_small(sweep: Path, *extra: str) -> dict:
    args = args_for(sweep, "--vgg-size", "64", "--style-eps", "100", "--semantic-eps", "0.01",
                    "--style-min-samples", "2", "--semantic-min-samples", "2", *extra)  # fmt: skip
    return curate.curate(args)


def read_rows(sweep: Path) -> list[dict]:
    with (sweep / "curation" / "clusters.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_min_score_filters(small_sweep: Path):
    run_small(small_sweep, "--min-score", "5", "--book-size", "0")
    assert sorted(r["image"] for r in read_rows(small_sweep)) == [
        f"{n}/final.png" for n in range(4, 8)
    ]  # scores 5…8; failed job 8 never


def test_min_score_above_every_score_names_the_range(small_sweep: Path, capsys):
    assert curate.main([str(small_sweep), "--min-score", "60"]) == 2
    err = capsys.readouterr().err
    assert "scores run from 1 to 8 (scored by nima (range [1, 10]))" in err
    assert "Traceback" not in err


def test_clusters_csv_columns(small_sweep: Path):
    run_small(small_sweep, "--min-score", "0", "--book-size", "0")
    rows = read_rows(small_sweep)
    assert tuple(rows[0]) == (
        "image",
        "score",
        "prompt",
        "style_cluster",
        "semantic_cluster",
        "kept",
    )
    assert len(rows) == 8 and {r["kept"] for r in rows} <= {"True", "False"}
    assert all(r["semantic_cluster"] != "" for r in rows if r["kept"] == "True")


def test_contact_sheets_link_existing_images_and_escape_prompts(small_sweep: Path):
    import re

    written = run_small(small_sweep, "--min-score", "0", "--book-size", "0")
    sheets = [p for name, p in written.items() if name.startswith("style_")]
    assert sheets
    text = "".join(p.read_text() for p in sheets)
    links = set(re.findall(r'(?:src|href)="([^"]+)"', text))
    assert len(links) == 8
    assert all((small_sweep / "curation" / link).resolve().is_file() for link in links)
    assert "&lt;script&gt;x()&lt;/script&gt;" in text and "<script>" not in text
    assert (small_sweep / "curation" / "umap_style.png").stat().st_size > 0


@pytest.fixture
def search_sweep(tmp_path: Path) -> Path:
    """A search's sweep dir: six jobs (two families) whose result.json and PNG text chunk hold
    only an override, and a search.db with their sampled prompts and scores 1…6, plus a failed
    (though scored) and a still-launched evaluation whose images exist."""
    from genart.search.store import FILENAME, SearchStore

    rng = np.random.default_rng(3)
    sweep = tmp_path / "sweep"
    store = SearchStore(sweep / FILENAME)
    store.add_individuals(0, [[0.5, 0.5]] * 4)
    store.add_individuals(1, [[0.5, 0.5]] * 4)
    launched, finished = [], []
    for job in range(8):
        generation, individual = divmod(job, 4)
        run_dir = write_job(sweep, job, family_image(FAMILIES[job % 2], rng), 100.0 + job,
                            f"+search.pieces=[{job}]")  # fmt: skip
        key = {"generation": generation, "individual": individual, "repeat": 0}
        launched.append({**key, "prompt": f"sampled prompt {job}", "pieces": [job], "seed": job,
                         "job": job, "run_dir": str(run_dir)})  # fmt: skip
        status = {6: "failed", 7: "launched"}.get(job, "ok")
        score = None if status == "launched" else float(job + 1)  # failed job 6 scored 7
        finished.append({**key, "image": str(run_dir / "final.png"), "score": score,
                         "fitness": score or 0.0, "status": status, "error": None})  # fmt: skip
    store.launch(launched)
    store.finish(finished[:7])  # job 7 is still out
    store.close()
    return sweep


def test_a_search_db_is_the_source_of_images_prompts_and_scores(search_sweep: Path):
    written = run_small(search_sweep, "--min-score", "0", "--book-size", "0")
    rows = read_rows(search_sweep)
    assert tuple(rows[0])[:6] == sheets.CSV_COLUMNS
    assert tuple(rows[0])[6:] == ("generation", "individual", "repeat")
    by_job = {int(r["image"].split("/")[0]): r for r in rows}
    assert sorted(by_job) == list(range(6))  # the failed (6) and launched (7) rows never
    for job, row in by_job.items():
        assert row["prompt"] == f"sampled prompt {job}" and float(row["score"]) == job + 1
        assert (int(row["generation"]), int(row["individual"]), row["repeat"]) == (
            *divmod(job, 4),
            "0",
        )
    text = "".join(p.read_text() for name, p in written.items() if name.startswith("style_"))
    assert "sampled prompt 5" in text and "+search.pieces" not in text


def test_a_search_dbs_scores_name_the_range_when_none_passes(search_sweep: Path, capsys):
    assert curate.main([str(search_sweep), "--min-score", "60"]) == 2
    err = capsys.readouterr().err  # the DB's scores 1…6 (not result.json's 100…107), its scorer
    assert "its 6 scores run from 1 to 6 (scored by nima (range [1, 10]))" in err


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require_weasyprint() -> None:
    """Skip without WeasyPrint/Pango; fail instead under CI=true (.ci/run installs Pango)."""
    try:
        book.import_weasyprint()
    except Exception as err:
        (pytest.fail if on_ci() else pytest.skip)(str(err))


def test_missing_pango_fails_under_ci_and_skips_elsewhere(monkeypatch):
    def no_pango():
        raise curate.UserError("book.pdf needs WeasyPrint and Pango (OSError: no libpango)")

    monkeypatch.setattr(book, "import_weasyprint", no_pango)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="libpango"):
        require_weasyprint()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="libpango"):
        require_weasyprint()


def first_page_png(pdf: Path, out: Path) -> tuple[int, np.ndarray]:
    """The PDF's page count and its first page rendered to a PNG, as an array."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(pdf))
    document[0].render(scale=1).to_pil().save(out)
    return len(document), np.asarray(Image.open(out).convert("L"))


def test_book_has_a_cover_then_one_page_per_kept_image(small_sweep: Path, tmp_path: Path):
    require_weasyprint()
    run_small(small_sweep, "--min-score", "0", "--book-size", "3", "--title", "Test Book")
    kept = [r for r in read_rows(small_sweep) if r["kept"] == "True"]
    pages, cover = first_page_png(small_sweep / "curation" / "book.pdf", tmp_path / "p1.png")
    assert pages == 1 + min(3, len(kept))
    assert cover.min() < 128 and cover.max() > 128  # the title's dark ink on a white page


def test_book_captions_from_an_openai_compatible_stub(small_sweep: Path, monkeypatch):
    require_weasyprint()
    asked = []

    class Stub(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append((self.path, self.headers["Authorization"], body))
            reply = {"choices": [{"message": {"content": "a stub caption"}}]}
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(reply).encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STUB_KEY", "sekret")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        run_small(small_sweep, "--min-score", "0", "--book-size", "2", "--captions", "openai",
                  "--captions-url", url, "--captions-model", "m", "--captions-key-env", "STUB_KEY")  # fmt: skip
    finally:
        server.shutdown()
    assert asked and asked[0][:2] == ("/v1/chat/completions", "Bearer sekret")
    assert asked[0][2]["model"] == "m" and "prompt" in asked[0][2]["messages"][0]["content"]


def test_missing_vgg_weights_is_one_paragraph_naming_the_flag(small_sweep: Path, capsys):
    code = curate.main(
        [str(small_sweep), "--min-score", "0", "--vgg-weights", str(small_sweep / "nope.pth")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--vgg-weights" in err and "--vgg-random-seed" in err
    assert "Traceback" not in err


def test_missing_clip_weights_is_one_paragraph_naming_the_flag(small_sweep: Path, capsys):
    code = curate.main([str(small_sweep), "--min-score", "0", "--vgg-random-seed", "0",
                        "--guide", "clip_vitb32", "--style-eps", "100", "--style-min-samples", "2",
                        "--vgg-size", "64", "--book-size", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--guide-override guide.models.vitb32.pretrained.path" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_curate_a_tiny_real_sweep_writes_every_output(tmp_path: Path):
    sweep = tmp_path / "sweep"
    made = cli("genart", *TINY, "steps=1", "size=[32,32]", "seed=0,1,2,3",
               f"hydra.sweep.dir={sweep}", "-m", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    run = cli("genart.curate", str(sweep), "--min-score", "-1", "--vgg-random-seed", "0",
              "--guide", "clip_tiny", "--vgg-size", "64", "--style-eps", "100",
              "--style-min-samples", "2", "--semantic-min-samples", "2", cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = sweep / "curation"
    for name in ("clusters.csv", "style_0.html", "umap_style.png", "umap_semantic.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(read_rows(sweep)) == 4
    require_weasyprint()
    pages, cover = first_page_png(out / "book.pdf", tmp_path / "p1.png")
    assert pages >= 2 and cover.min() < 128
