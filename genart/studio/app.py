"""The studio's web app (Flask): a generation's images, favourites, a click, "Next generation".

Issue 17's must haves 4 and 5, in part: the page, the picks, and "Next generation", which breeds
the children's genes (genart.studio.breed), launches them as a new genart sweep in
`studio/gen_<k>/sweep` through the parents' own launcher, records their lineage, and shows that
generation's page (refreshing while it renders); "rank by my picks" lets a surrogate of the
user's taste choose the bred children from a larger pool. Not yet: a preset button per card.
Security: Host header checked (DNS rebinding), a token when bound beyond loopback, a CSRF token
on every POST, files served only from inside the sweep dirs (symlinks resolved), Jinja
autoescape for everything the sweep wrote (prompts included).
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
from pathlib import Path

from flask import Flask, abort, g, redirect, render_template_string, request, send_file

from genart.studio.db import FILENAME, StudioStore, key, read_search_prompts, studio_dir
from genart.tools.sweep_dirs import job_dirs, read_job

LOOPBACK = ("127.0.0.1", "localhost", "::1")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")  # nothing else is ever served
TOKEN_COOKIE, TOKEN_HEADER = "genart_studio_token", "X-Studio-Token"
MAX_CHILDREN = 64  # a page of children; more is a sweep, not a studio step
GENERATION = "gen_{}"  # studio/gen_<k>/: genes/, sweep/, launch.log

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>genart studio · {{ sweep.name }}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1rem; background: #fafafa; color: #222; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
.card.failed { border-color: #c33; background: #fff5f5; }
.pick { position: relative; }
.pick img { width: 100%; height: auto; display: block; cursor: crosshair; }
.mark { position: absolute; width: 12px; height: 12px; margin: -7px; border: 2px solid #f0f;
  border-radius: 50%; pointer-events: none; display: none; }
.prompt, .lineage { font: 12px monospace; overflow-wrap: anywhere; }
</style>
</head>
<body>
{% if rendering %}<meta http-equiv="refresh" content="3">{% endif %}
<h1>{{ sweep.name }}{% if gen %} · generation {{ gen }}{% endif %}</h1>
<p>generations: <a href="/">0</a>{% for k in generations %} · <a href="/?gen={{ k }}">{{ k }}</a>{% endfor %}</p>
{% if rendering %}<p id="progress">rendering: {{ done }} of {{ expected }} done</p>{% endif %}
{% if ranked %}<p id="ranked">ranked by your picks: the bred children are the best
 {{ ranked.kept }} of {{ ranked.pool }} candidates by a model of your taste ({{ ranked.seen }} images
 seen, {{ ranked.chosen }} chosen)</p>{% endif %}
<p>{{ cards|length }} images. Tick favourites, click a point on an image to mark "change here".</p>
<form method="post" action="/next">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="gen" value="{{ gen }}">
<input type="hidden" name="click" id="click" value="">
<div id="grid">
{% for card in cards %}
<div class="card {{ card.status }}">
<label><input type="checkbox" name="favourite" value="{{ card.rel }}"> job {{ card.rel }}
 · {{ card.status }} · score {{ card.score_text }} · seed {{ card.seed }}</label>
{% if card.image %}<div class="pick"><img src="/file/{{ card.image }}" alt="job {{ card.rel }}"
 data-run="{{ card.rel }}"><span class="mark"></span></div>{% endif %}
<p class="prompt">{{ card.prompt }}</p>
{% if card.lineage %}<p class="lineage" title="{{ card.lineage.parents|join(", ") }}">
{{- card.lineage.operator }} of {{ card.lineage.labels|join(", ") }}
{%- if card.lineage.click_x is not none %} at ({{ "%.0f"|format(card.lineage.click_x) }},
 {{ "%.0f"|format(card.lineage.click_y) }}){% endif %} · breeding seed {{ card.lineage.seed }}
 · generation {{ card.lineage.generation }}</p>{% endif %}
</div>
{% endfor %}
</div>
<p><label>children <input type="number" name="children" min="1" max="{{ max_children }}"
 value="4"></label> <label><input type="checkbox" name="rank" value="on" checked> rank by my
 picks</label> <button type="submit">Next generation</button></p>
</form>
<script nonce="{{ nonce }}">
document.querySelectorAll(".pick img").forEach((img) => img.addEventListener("click", (e) => {
  const r = img.getBoundingClientRect(), sx = img.naturalWidth / r.width;
  const x = (e.clientX - r.left) * sx, y = (e.clientY - r.top) * sx;  // image pixels
  document.getElementById("click").value = JSON.stringify({run: img.dataset.run, x: x, y: y});
  document.querySelectorAll(".mark").forEach((m) => (m.style.display = "none"));
  const mark = img.nextElementSibling;
  mark.style.left = e.clientX - r.left + "px"; mark.style.top = e.clientY - r.top + "px";
  mark.style.display = "block";
}));
</script>
</body>
</html>
"""


def create_app(
    sweep_dir: Path, host: str = "127.0.0.1", port: int | None = None, token: str | None = None
) -> Flask:
    """The studio on one sweep dir; `host`/`port` are what it is bound to (the Host check)."""
    app = Flask(__name__, static_folder=None)  # nothing served but the sweep's images
    sweep = Path(sweep_dir).resolve()
    db_path = studio_dir(sweep) / FILENAME
    StudioStore(db_path).close()  # created (schema) at start-up, never by a GET
    app.config.update(
        SWEEP=sweep,
        STUDIO=studio_dir(sweep),
        ROOTS=[sweep, studio_dir(sweep)],
        STUDIO_DB=db_path,
        TOKEN=token,
        CSRF=secrets.token_urlsafe(32),
        ALLOWED_HOSTS=allowed_hosts(host),
        PORT=port,
    )
    app.before_request(check_host)
    app.before_request(check_token)
    app.after_request(harden)
    app.teardown_request(close_store)
    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/file/<path:rel>", view_func=serve_file)
    app.add_url_rule("/next", view_func=next_generation, methods=["POST"])
    return app


# -- requests ----------------------------------------------------------------------------------
def allowed_hosts(host: str) -> set[str]:
    return {*LOOPBACK, host.strip("[]").lower()}


def check_host():
    """Refuse a Host header naming anything but loopback or the bound host (DNS rebinding)."""
    from flask import current_app

    name, port = split_host(request.headers.get("Host", ""))
    wanted = current_app.config["PORT"]
    if name not in current_app.config["ALLOWED_HOSTS"] or (port and wanted and port != wanted):
        abort(400, "unexpected Host header")


def split_host(header: str) -> tuple[str, int | None]:
    """('localhost', 8000) from 'localhost:8000', ('::1', None) from '[::1]'; ('', None) if bad."""
    header = header.strip().lower()
    name, _, port = header.rpartition(":") if not header.endswith("]") else (header, "", "")
    if not name or (port and not port.isdigit()):
        name, port = header, ""
    name = name.strip("[]")
    return (name, int(port)) if port else (name, None)


def check_token():
    """With a token, every request carries it: header, cookie, or a first visit's ?token=."""
    from flask import current_app

    token = current_app.config["TOKEN"]
    if token is None:
        return None
    given = request.args.get("token")
    if given is not None and same(given, token):  # set the cookie and drop it from the URL
        response = redirect(request.path)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response
    carried = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
    if not same(carried, token):
        abort(403, "this studio needs its token: open the URL it printed (…/?token=…)")
    return None


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def harden(response):
    """No framing, no referrer, and only this page's own inline script (by nonce) may run."""
    nonce = g.get("nonce", "")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        f"script-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def store() -> StudioStore:
    """This request's handle on studio.db (sqlite3 connections stay in their thread)."""
    from flask import current_app

    if "store" not in g:
        g.store = StudioStore(current_app.config["STUDIO_DB"])
    return g.store


def close_store(_error=None) -> None:
    if "store" in g:
        g.pop("store").close()


# -- views -------------------------------------------------------------------------------------
def index():
    from flask import current_app

    g.nonce = secrets.token_urlsafe(16)
    cfg = current_app.config
    gen = generation_arg(request.args.get("gen", ""))
    sweep = generation_sweep(gen)
    expected = len(list((cfg["STUDIO"] / GENERATION.format(gen) / "genes").glob("*"))) if gen else 0
    done = len(list(sweep.glob("*/result.json"))) if sweep.is_dir() else 0
    return render_template_string(
        PAGE,
        sweep=cfg["SWEEP"],
        gen=gen,
        generations=generations(cfg["STUDIO"]),
        rendering=bool(gen) and done < expected,
        ranked=read_ranked(cfg["STUDIO"] / GENERATION.format(gen)) if gen else None,
        done=done,
        expected=expected,
        cards=read_cards(sweep, store(), prefix=image_prefix(gen)) if sweep.is_dir() else [],
        csrf=cfg["CSRF"],
        nonce=g.nonce,
        max_children=MAX_CHILDREN,
    )


def read_ranked(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "ranked.json").read_text())
    except (OSError, ValueError):
        return None


def generation_arg(text: str) -> int:
    """`?gen=<k>`: 0 (the sweep the studio opened) or a generation the studio made."""
    from flask import current_app

    if text in ("", "0"):
        return 0
    if not text.isdigit() or int(text) not in generations(current_app.config["STUDIO"]):
        abort(404)
    return int(text)


def generations(studio: Path) -> list[int]:
    found = (p.name.removeprefix("gen_") for p in studio.glob("gen_*") if p.is_dir())
    return sorted(int(k) for k in found if k.isdigit())


def generation_sweep(gen: int) -> Path:
    from flask import current_app

    cfg = current_app.config
    return cfg["SWEEP"] if gen == 0 else cfg["STUDIO"] / GENERATION.format(gen) / "sweep"


def image_prefix(gen: int) -> str:
    """Where a generation's images are, relative to the studio dir (a served root)."""
    return "" if gen == 0 else f"{GENERATION.format(gen)}/sweep/"


def read_cards(sweep: Path, store: StudioStore, prefix: str = "") -> list[dict]:
    """One card per job: image (relative to the sweep), score, prompt, lineage row if any."""
    prompts = read_search_prompts(sweep)
    cards = []
    for job_dir in job_dirs(sweep):
        job = read_job(job_dir)
        image = job_dir / "final.png"
        cards.append(
            {
                "rel": job_dir.name,
                "status": job["status"],
                "seed": job["seed"],
                "score_text": "—" if job["score"] is None else f"{job['score']:.4f}",
                "image": f"{prefix}{job_dir.name}/final.png" if image.is_file() else None,
                "prompt": job.get("prompt")
                or prompts.get(key(job_dir))
                or png_prompt(image)
                or " ".join(job["overrides"]),
                "lineage": labelled(store.lineage(job_dir)),
            }
        )
    return cards


def labelled(lineage: dict | None) -> dict | None:
    """The lineage row with its parents as "gen k job n" (the full dirs in the title)."""
    if lineage is None:
        return None
    return {**lineage, "labels": [run_label(Path(p)) for p in lineage["parents"]]}


def run_label(run: Path) -> str:
    from flask import current_app

    cfg = current_app.config
    if run.parent == cfg["SWEEP"]:
        return f"gen 0 job {run.name}"
    generation = run.parent.parent.name.removeprefix("gen_")
    if run.parent.parent.parent == cfg["STUDIO"] and generation.isdigit():
        return f"gen {generation} job {run.name}"
    return str(run)


def png_prompt(image: Path) -> str | None:
    """The prompt final.png records in its text chunk (genart writes it), if any."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            return getattr(im, "text", {}).get("prompts")
    except OSError:
        return None


def serve_file(rel: str):
    """A file of the sweep dirs: it must resolve (symlinks followed) inside one of them."""
    from flask import current_app

    path = inside(rel, current_app.config["ROOTS"])
    if path is None or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        abort(404)
    return send_file(path)


def inside(rel: str, roots: list[Path]) -> Path | None:
    """`rel` under a root, resolved, if it stays inside that root (the first root where it
    exists); else None."""
    if "\\" in rel or "\x00" in rel or Path(rel).is_absolute():
        return None
    for root in roots:
        path = (root / rel).resolve()
        if path.is_relative_to(root) and path.exists():
            return path
    return None


def next_generation():
    """Validate and record the picks, breed the children's genes, launch them as a new sweep
    (studio/gen_<k>/sweep) with their lineage, and show that generation."""
    from flask import current_app

    from genart.errors import UserError

    cfg = current_app.config
    if not same(request.form.get("csrf", ""), cfg["CSRF"]):
        abort(403, "missing or wrong CSRF token: reload the studio page and try again")
    gen = generation_arg(request.form.get("gen", ""))
    known = {d.name: d for d in job_dirs(generation_sweep(gen))}
    favourites = request.form.getlist("favourite")
    if not favourites or any(f not in known for f in favourites):
        abort(400, "tick at least one favourite among this generation's images")
    children = parse_children(request.form.get("children", ""))
    click = parse_click(request.form.get("click", ""), known)
    store().add_picks(generation_sweep(gen), [known[f] for f in favourites], click, children)
    try:
        rank = request.form.get("rank") == "on"
        k = launch(cfg["STUDIO"], [known[f] for f in favourites], click, children, store(), rank)
    except UserError as err:
        abort(400, str(err))
    return redirect(f"/?gen={k}", code=303)


def launch(
    studio: Path, favourites: list[Path], click: dict | None, n: int, db, rank: bool = False
) -> int:
    """Generation k: genes (ranked by the user's taste when asked), lineage rows and the sweep
    (a background process: the page polls)."""
    import os
    import subprocess

    from genart.studio.breed import plan_children, sweep_command, write_genes

    k = max(generations(studio), default=0) + 1
    folder = studio / GENERATION.format(k)
    children = plan_children(favourites, click, n, seed=k)
    ranked = rank_by_taste(studio, children, favourites, db) if rank and favourites else None
    genes = write_genes(children, folder / "genes")
    if ranked is not None:
        (folder / "ranked.json").write_text(json.dumps(ranked, indent=2))
    sweep = folder / "sweep"
    for child in children:
        parents = [Path(p) for p in child.parents]
        db.add_lineage(
            sweep / str(child.index), parents, child.operator, child.seed, k, child.click
        )
    command = sweep_command(favourites[0] if favourites else Path(click["run"]), genes, sweep)
    env = {key: v for key, v in os.environ.items() if key != "WANDB_SERVICE"}
    with open(folder / "launch.log", "w") as log:
        subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    return k


def rank_by_taste(studio: Path, children: list, favourites: list[Path], db) -> dict | None:
    """Fit the surrogate on every image seen (every generation's jobs), chosen = ever ticked, and
    let it pick the bred children from a larger pool; None when it learned nothing."""
    from flask import current_app

    from genart.studio.breed import fit_taste, parent_models, rank_children

    seen = list(job_dirs(current_app.config["SWEEP"]))
    for k in generations(studio):
        sweep = studio / GENERATION.format(k) / "sweep"
        seen += list(job_dirs(sweep)) if sweep.is_dir() else []
    chosen = {f for row in db.picks() for f in row["favourites"]}
    generator, guide = parent_models(favourites[0])
    surrogate = fit_taste(seen, chosen, guide)
    ranked = rank_children(children, favourites, surrogate, generator, guide)
    return None if ranked is None else {**ranked, "seen": len(seen), "chosen": len(chosen)}


def parse_children(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_CHILDREN:
        abort(400, f"children must be a whole number from 1 to {MAX_CHILDREN}")
    return int(text)


def parse_click(text: str, known: dict[str, Path]) -> dict | None:
    """{run, x, y} (image pixels) from the page's hidden field, or None when nothing was clicked."""
    if not text:
        return None
    try:
        click = json.loads(text)
        run, x, y = click["run"], float(click["x"]), float(click["y"])
    except (ValueError, TypeError, KeyError):
        abort(400, "the click point could not be read")
    if run not in known or not (math.isfinite(x) and math.isfinite(y)) or min(x, y) < 0:
        abort(400, "the click point is not on one of this generation's images")
    return {"run": key(known[run]), "x": x, "y": y}
