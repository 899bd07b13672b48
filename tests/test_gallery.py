"""genart.tools.gallery on a fake sweep: links, escaping, failed jobs, CLI errors, a real browser."""

import contextlib
import functools
import http.server
import json
import os
import shutil
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from genart.tools.gallery import build_gallery, main, read_job, save_trajectory
from tests.conftest import REPO, cli

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's: apt, not a download
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
SCORES = [0.1, 0.3, 0.2]  # jobs 0, 1, 2; job 3 fails
HOSTILE = "prompts.left='<script>alert(1)</script> & \"co\"'"


def write_png(path: Path, width: int, height: int, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)  # a left-to-right ramp
    rgb[..., 1] = shade
    Image.fromarray(rgb).save(path)


def write_job(job: Path, overrides: list[str], seed: int, score: float | None) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {json.dumps(o)}\n" for o in overrides)
    )
    (job / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nsteps: 30\n")
    failed = score is None
    error = "Traceback (most recent call last):\nValueError: bad <prompt> & co" if failed else None
    result = {"status": "failed" if failed else "ok", "score": score, "seed": seed, "steps": 30}
    result |= {"overrides": overrides, "error": error}
    (job / "result.json").write_text(json.dumps(result))
    if failed:
        (job / "error.txt").write_text(error + "\n")
        return
    for step in (10, 20, 30):
        write_png(job / "frames" / f"{step:05d}.png", 320, 160, shade=step * 8)
    write_png(job / "final.png", 320, 160, shade=240)
    rows = [f"{step},{1 / step},{0.5 / step},{0.5 / step}" for step in (1, 2, 3)]
    (job / "stats" / "losses.csv").parent.mkdir()
    (job / "stats" / "losses.csv").write_text("\n".join(["step,total,clip,tv", *rows]) + "\n")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    for n, score in enumerate([*SCORES, None]):
        overrides = [
            "+preset=doorway",
            HOSTILE if n == 1 else f"prompts.left=forest{n}",
            f"seed={n}",
        ]
        write_job(root / str(n), overrides, seed=n, score=score)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_index_links_only_existing_files(sweep: Path):
    index = build_gallery(sweep)
    assert index == sweep / "index.html"
    parser = Links()
    parser.feed(index.read_text())
    assert len(parser.links) >= 3 * 3 + 1  # 3 images a finished job, error.txt of the failed one
    for link in parser.links:
        assert not link.startswith(("/", "http:", "https:", "file:")), link  # zip-able folder
        assert (sweep / unquote(link)).is_file(), link


def test_assets_are_small_and_animated(sweep: Path):
    build_gallery(sweep)
    with Image.open(sweep / "0" / "gallery" / "trajectory.webp") as webp:
        assert webp.n_frames == 3 and webp.width <= 256
    with Image.open(sweep / "0" / "gallery" / "loss.png") as plot:
        assert plot.width <= 400
    assert not (sweep / "3" / "gallery" / "trajectory.webp").exists()


def test_text_is_escaped(sweep: Path):
    page = build_gallery(sweep).read_text()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;co&quot;" in page
    assert "ValueError: bad &lt;prompt&gt; &amp; co" in page


def test_cards_carry_scores_and_failed_job(sweep: Path):
    page = build_gallery(sweep).read_text()
    for n, score in enumerate(SCORES):
        assert f'class="card ok" data-job="{n}" data-score="{score}"' in page
    assert 'class="card failed" data-job="3" data-score=""' in page
    assert "4 jobs · 3 ok · 1 failed" in page


def test_rebuild_overwrites_only_generated_files(sweep: Path):
    (sweep / "0" / "gallery" / "notes.txt").parent.mkdir()
    (sweep / "0" / "gallery" / "notes.txt").write_text("mine")
    first = build_gallery(sweep).read_text()
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    assert build_gallery(sweep).read_text() == first
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before
    assert (sweep / "0" / "gallery" / "notes.txt").read_text() == "mine"


def test_job_without_result_json_falls_back_to_hydra_files(sweep: Path):
    (sweep / "2" / "result.json").unlink()
    job = read_job(sweep / "2")
    assert job.ok and job.seed == 2 and job.score is None
    assert job.overrides == ["+preset=doorway", "prompts.left=forest2", "seed=2"]


def test_broken_frame_skips_trajectory_but_keeps_page(sweep: Path, capsys):
    build_gallery(sweep)
    (sweep / "0" / "frames" / "00020.png").write_bytes(b"\x89PNG half-written")
    page = build_gallery(sweep).read_text()
    assert "skipped" in capsys.readouterr().err
    assert not (sweep / "0" / "gallery" / "trajectory.webp").exists()  # no stale copy either
    assert "0/gallery/trajectory.webp" not in page and "1/gallery/trajectory.webp" in page


def test_long_runs_are_subsampled_ending_on_last_frame(tmp_path: Path):
    frames = [tmp_path / f"{step:05d}.png" for step in range(10, 1310, 10)]  # 130 frames
    for i, frame in enumerate(frames):
        write_png(frame, 16, 8, shade=i)
    save_trajectory(frames, tmp_path / "t.webp")
    with Image.open(tmp_path / "t.webp") as webp:
        assert webp.n_frames <= 60
        webp.seek(webp.n_frames - 1)
        assert abs(np.asarray(webp.convert("RGB"))[..., 1].mean() - 129) < 4


@pytest.mark.parametrize("layout", ["missing", "empty", "unnumbered"])
def test_not_a_sweep_exits_2_with_message(tmp_path: Path, layout: str, capsys):
    folder = {"missing": "nope", "empty": "empty", "unnumbered": "runs"}[layout]
    target = tmp_path / folder
    if layout in ("empty", "unnumbered"):
        (target / "a").mkdir(parents=True)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert "not a Hydra multirun folder" in err and "Traceback" not in err


@pytest.mark.parametrize("typed", ["path", "dot"])
def test_job_of_a_sweep_points_at_the_sweep(sweep: Path, typed: str):
    job = sweep / "1"
    done = cli("genart.tools.gallery", *([str(job)] if typed == "path" else ["."]), cwd=job)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    command = done.stderr.split("python -m genart.gallery ")[-1].strip()
    assert (job / command).resolve() == sweep.resolve()  # the path works from where it was typed
    assert cli("genart.tools.gallery", command, cwd=job).returncode == 0
    assert (sweep / "index.html").exists()


def test_a_single_run_gets_a_page_of_its_own(tmp_path: Path):
    run = tmp_path / "outputs" / "2024-05-01" / "12-00-00"  # hydra.run.dir, not a sweep's job
    write_job(run, ["prompts.left=forest"], seed=7, score=0.25)
    assert main([str(run)]) == 0
    page = (run / "index.html").read_text()
    assert "genart run 2024-05-01/12-00-00" in page and "1 job · 1 ok · 0 failed" in page
    assert 'data-score="0.25"' in page and "prompts.left=forest" in page
    parser = Links()
    parser.feed(page)
    assert len(parser.links) >= 3 and all((run / unquote(link)).is_file() for link in parser.links)


def test_cli_prints_index_and_exits_2_on_bad_dir(sweep: Path, tmp_path: Path):
    ok = cli("genart.tools.gallery", str(sweep), cwd=REPO)
    assert ok.returncode == 0 and ok.stdout.strip() == str(sweep / "index.html")
    bad = cli("genart.tools.gallery", str(tmp_path), cwd=REPO)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@contextlib.contextmanager
def serve(root: Path):
    """http://127.0.0.1:<free port> serving `root` from a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Debian Chromium driven by Debian's chromedriver: nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,900",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require_browser() -> None:
    """Skip without Chromium, chromedriver or selenium; fail instead under CI=true (CI installs
    them, so a missing one is a broken CI, not a reason to skip)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        reason = f"needs {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        (pytest.fail if on_ci() else pytest.skip)(reason)


def test_missing_browser_fails_under_ci_and_skips_elsewhere(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium"):
        require_browser()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no-chromium"):
        require_browser()


def card_order(driver, attribute: str) -> list[str]:
    script = f"return Array.from(document.querySelectorAll('#grid .card')).map(c => c.{attribute})"
    return driver.execute_script(script)


@pytest.mark.slow
def test_browser_loads_images_and_sorts(sweep: Path, tmp_path: Path):
    require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    build_gallery(sweep)
    with serve(sweep) as url, chromium(tmp_path / "profile") as driver:
        driver.get(f"{url}/index.html")
        images = "Array.from(document.images)"
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script(f"return {images}.every(i => i.complete)")
        )
        broken = driver.execute_script(
            f"return {images}.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
        )
        assert broken == []
        assert driver.execute_script(f"return {images}.length") == 3 * 3  # final, webp, losses
        assert card_order(driver, "dataset.job") == ["0", "1", "2", "3"]
        driver.find_element(By.CSS_SELECTOR, 'button[data-sort="desc"]').click()
        assert card_order(driver, "dataset.score") == ["0.3", "0.2", "0.1", ""]
        driver.find_element(By.CSS_SELECTOR, 'button[data-sort="asc"]').click()
        assert card_order(driver, "dataset.score") == ["0.1", "0.2", "0.3", ""]
        driver.find_element(By.CSS_SELECTOR, 'button[data-sort="job"]').click()
        assert card_order(driver, "dataset.job") == ["0", "1", "2", "3"]


def test_the_sweep_summary_reads_the_jobs_the_gallery_shows(sweep: Path):
    from genart.tools.sweep_dirs import job_dirs
    from genart.tools.sweep_dirs import read_job as read_record
    from genart.tools.sweep_summary import summarise

    (sweep / "2" / "result.json").unlink()  # an older run: final.png, no error.txt
    records = [read_record(d) for d in job_dirs(sweep)]
    assert [read_job(d).ok for d in job_dirs(sweep)] == [r["status"] == "ok" for r in records]
    text = summarise(records)
    assert "3 of 4 jobs succeeded" in text and "FAILED" in text
    assert "ValueError: bad <prompt> & co" in text and f"best score 0.3000: {sweep / '1'}" in text
