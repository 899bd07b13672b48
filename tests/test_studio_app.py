"""The studio's web app (issue 17, first slice): the page, the picks, and each hostile request,
through Flask's test client on a tiny fake sweep (no model runs)."""

from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genart.search.store import SearchStore
from genart.studio import __main__ as studio_main
from genart.studio.app import TOKEN_COOKIE, TOKEN_HEADER, create_app
from genart.studio.db import FILENAME, StudioStore, studio_dir

SECRET = b"SECRET-OUTSIDE-THE-SWEEP"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PORT = 8765


def write_png(path, prompt=None):
    info = PngInfo()
    if prompt:
        info.add_text("prompts", prompt)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, pnginfo=info)


@pytest.fixture
def sweep(tmp_path):
    """multirun/sweep/{0,1,2,3} with final.png + result.json; job 0's result.json prompt and job
    1's search.db prompt are HTML; secrets sit beside the sweep and outside multirun/."""
    root = tmp_path / "multirun"
    sweep = root / "sweep"
    for job in range(4):
        d = sweep / str(job)
        d.mkdir(parents=True)
        write_png(d / "final.png", prompt="a png-recorded prompt" if job == 2 else None)
        result = {
            "status": "ok",
            "score": 0.25 + job / 10,
            "seed": job,
            "overrides": [f"seed={job}"],
        }
        if job == 0:
            result["prompt"] = SCRIPT
        (d / "result.json").write_text(json.dumps(result))
    (root / "secret.png").write_bytes(SECRET)
    (tmp_path / "outside.png").write_bytes(SECRET)
    os.symlink(tmp_path / "outside.png", sweep / "0" / "link.png")
    os.symlink(tmp_path, sweep / "0" / "up")  # a symlinked folder out of the sweep
    store = SearchStore(sweep / "search.db")
    store.launch(
        [
            {
                "generation": 0,
                "individual": 1,
                "repeat": 0,
                "prompt": IMG,
                "pieces": [1],
                "seed": 1,
                "job": 1,
                "run_dir": "1",
            }
        ]
    )
    store.close()
    return sweep


def client_of(sweep, **kw):
    app = create_app(sweep, port=PORT, **kw)
    app.config["TESTING"] = True
    return app, app.test_client()


def csrf_of(page: bytes) -> str:
    return re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()


def picks(sweep):
    store = StudioStore(studio_dir(sweep) / FILENAME)
    try:
        return store.picks()
    finally:
        store.close()


# -- the page ------------------------------------------------------------------------------------
def test_the_page_lists_each_job_with_image_score_prompt_and_a_checkbox(sweep):
    _, client = client_of(sweep)
    page = client.get("/").get_data(as_text=True)
    for job in range(4):
        assert f'src="/file/{job}/final.png"' in page
        assert f'name="favourite" value="{job}"' in page
    assert "score 0.5500" in page  # job 3
    assert "a png-recorded prompt" in page  # job 2: final.png's text chunk
    assert 'name="children"' in page and 'id="click"' in page and "Next generation" in page
    assert client.get("/file/2/final.png").status_code == 200


def test_each_card_shows_its_lineage_row(sweep):
    store = StudioStore(studio_dir(sweep) / FILENAME)
    store.add_lineage(
        sweep / "2", [sweep / "0", sweep / "1"], "crossover", seed=7, generation=1, click=(3.5, 4.0)
    )
    store.close()
    _, client = client_of(sweep)
    page = client.get("/").get_data(as_text=True)
    assert page.count('class="lineage"') == 1
    assert "crossover of gen 0 job 0, gen 0 job 1 at (4,\n 4)" in page
    assert "breeding seed 7" in page and f"{sweep / '0'}, {sweep / '1'}" in page  # the title


def test_studio_db_sits_in_studio_beside_the_sweeps_with_the_search_schema(sweep):
    client_of(sweep)
    store = StudioStore(sweep.parent / "studio" / "studio.db")
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    store.close()
    assert {"settings", "individuals", "evaluations", "generations", "lineage", "picks"} <= tables


def test_the_search_db_is_read_but_never_written(sweep):
    db = sweep / "search.db"
    before, mtime, files = db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(sweep))
    _, client = client_of(sweep)
    page = client.get("/").get_data(as_text=True)
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page  # job 1's prompt, from search.db
    token = csrf_of(client.get("/").data)
    client.post("/next", data={"csrf": token, "favourite": ["1"], "children": "2"})
    assert db.read_bytes() == before and db.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(sweep)) == files  # no journal, wal or shm left beside it


# -- Next generation -------------------------------------------------------------------------------
def test_next_generation_records_the_picks_and_refuses_runs_without_genes(sweep):
    """These fake jobs have no start_latent.safetensors: the picks are recorded, and breeding
    is refused in one sentence (tests/test_studio_breed.py launches real children)."""
    _, client = client_of(sweep)
    token = csrf_of(client.get("/").data)
    click = json.dumps({"run": "2", "x": 5.0, "y": 6.5})
    r = client.post(
        "/next", data={"csrf": token, "favourite": ["0", "3"], "click": click, "children": "4"}
    )
    assert r.status_code == 400 and "start_latent.safetensors" in r.get_data(as_text=True)
    [row] = picks(sweep)
    assert row["favourites"] == [str(sweep / "0"), str(sweep / "3")]
    assert row["click"] == {"run": str(sweep / "2"), "x": 5.0, "y": 6.5} and row["children"] == 4


@pytest.mark.parametrize(
    "form",
    [
        {"favourite": ["../../etc"], "children": "2"},
        {"favourite": [], "children": "2"},
        {"favourite": ["0"], "children": "0"},
        {"favourite": ["0"], "children": "1000"},
        {"favourite": ["0"], "children": "two"},
        {"favourite": ["0"], "children": "2", "click": '{"run": "9", "x": 1, "y": 1}'},
        {"favourite": ["0"], "children": "2", "click": '{"run": "0", "x": "nan", "y": 1}'},
        {"favourite": ["0"], "children": "2", "click": "not json"},
    ],
)
def test_bad_picks_are_refused_and_not_recorded(sweep, form):
    _, client = client_of(sweep)
    token = csrf_of(client.get("/").data)
    assert client.post("/next", data={"csrf": token, **form}).status_code == 400
    assert picks(sweep) == []


# -- CSRF, and GETs change nothing ------------------------------------------------------------------
@pytest.mark.parametrize("csrf", [None, "", "wrong", "x" * 43])
def test_a_post_without_the_right_csrf_token_is_forbidden(sweep, csrf):
    _, client = client_of(sweep)
    form = {"favourite": ["0"], "children": "2"} | ({} if csrf is None else {"csrf": csrf})
    assert client.post("/next", data=form).status_code == 403
    assert picks(sweep) == []


def test_gets_change_no_state(sweep):
    _, client = client_of(sweep)
    db = studio_dir(sweep) / FILENAME
    before = db.read_bytes()
    for url in ("/", "/file/0/final.png", "/next?favourite=0&children=2", "/file/../x.png"):
        client.get(url)
    assert client.get("/next?favourite=0&children=2").status_code == 405
    assert db.read_bytes() == before and picks(sweep) == []


# -- the Host header (DNS rebinding) -------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8765",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost:9999",
        "",
        "0.0.0.0:8765",
    ],
)
def test_a_foreign_host_header_is_refused(sweep, host):
    _, client = client_of(sweep)
    assert client.get("/", headers={"Host": host}).status_code == 400
    assert client.get("/file/0/final.png", headers={"Host": host}).status_code == 400


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8765", "[::1]:8765", "LOCALHOST:8765"])
def test_loopback_host_headers_pass(sweep, host):
    _, client = client_of(sweep)
    assert client.get("/", headers={"Host": host}).status_code == 200


# -- files: only inside the sweep dirs ---------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/file/../secret.png",
        "/file/0/../../secret.png",
        "/file/%2e%2e%2fsecret.png",
        "/file/..%2fsecret.png",
        "/file/%2e%2e/secret.png",
        "/file/%252e%252e%252fsecret.png",
        "/file/..%5csecret.png",
        "/file/0\\..\\..\\secret.png",
        "/file//etc/passwd",
        "/file/%2fetc%2fpasswd",
        "/file/0/link.png",
        "/file/0/up/outside.png",
        "/file/../studio/studio.db",
        "/file/0/result.json",
    ],
)
def test_a_file_outside_the_sweep_is_refused(sweep, url):
    _, client = client_of(sweep)
    r = client.get(url, follow_redirects=True)  # Werkzeug answers // with a 308 to one slash
    assert r.status_code in (400, 403, 404), (url, r.status_code)
    assert SECRET not in r.data and b"root:" not in r.data and b"SQLite" not in r.data


# -- HTML in a prompt is text ------------------------------------------------------------------------
def test_a_prompt_with_html_is_shown_as_text(sweep):
    _, client = client_of(sweep)
    page = client.get("/").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert (
        "<script>alert" not in page and "<img src=x" not in page and "onerror=alert(1)>" not in page
    )
    assert "script-src 'nonce-" in client.get("/").headers["Content-Security-Policy"]


# -- beyond loopback: a token on every request ---------------------------------------------------------
def test_binding_beyond_loopback_without_a_token_is_refused_at_start_up(sweep, monkeypatch, capsys):
    monkeypatch.setattr("flask.Flask.run", lambda *a, **k: pytest.fail("the server started"))
    assert studio_main.main([str(sweep), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and err.count("\n") == 1  # one paragraph


def test_a_sweep_dir_without_jobs_is_refused_at_start_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("flask.Flask.run", lambda *a, **k: pytest.fail("the server started"))
    assert studio_main.main([str(tmp_path)]) == 2
    assert "numbered job folders" in capsys.readouterr().err


@pytest.mark.parametrize(
    "carried", [{}, {"cookie": "wrong"}, {"header": "wrong"}, {"query": "wrong"}]
)
def test_with_a_token_a_request_without_it_is_forbidden(sweep, carried):
    _, client = client_of(sweep, host="0.0.0.0", token="s3cret-token")
    if "cookie" in carried:
        client.set_cookie(TOKEN_COOKIE, carried["cookie"])
    headers = {TOKEN_HEADER: carried["header"]} if "header" in carried else {}
    query = f"?token={carried['query']}" if "query" in carried else ""
    assert client.get("/" + query, headers=headers).status_code == 403
    assert client.get("/file/0/final.png", headers=headers).status_code == 403


def test_with_a_token_the_first_visit_sets_a_cookie_and_the_header_works(sweep):
    _, client = client_of(sweep, host="0.0.0.0", token="s3cret-token")
    first = client.get("/?token=s3cret-token")
    assert first.status_code == 302 and "token" not in first.headers["Location"]
    assert (
        "HttpOnly" in first.headers["Set-Cookie"]
        and "SameSite=Strict" in first.headers["Set-Cookie"]
    )
    assert client.get("/").status_code == 200  # the cookie now
    fresh = create_app(sweep, host="0.0.0.0", port=PORT, token="s3cret-token").test_client()
    assert fresh.get("/", headers={TOKEN_HEADER: "s3cret-token"}).status_code == 200
    assert (
        fresh.get("/", headers={"Host": "0.0.0.0:8765", TOKEN_HEADER: "s3cret-token"}).status_code
        == 200
    )


@pytest.mark.parametrize("gen", ["../", "1", "-1", "99", "1e3", "%2e%2e", "0x1"])
def test_a_generation_the_studio_did_not_make_is_not_found(sweep, gen):
    _, client = client_of(sweep)
    assert client.get(f"/?gen={gen}").status_code == 404
