"""The studio's next generation, without the page: picks → children's genes → a real genart sweep
that starts each job from its child's gene (tiny models, slow tier)."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from genart.errors import UserError
from genart.studio import operators
from genart.studio.breed import plan_children, read_gene, sweep_command, write_genes
from tests.conftest import OFFLINE, TINY, cli, user_environment

pytestmark = pytest.mark.slow
PARENTS = [*TINY, "size=[64,64]", "steps=2", "cutouts.cutn=2", "seed=0,1,2,3"]


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("parents")
    out = cli("genart", *PARENTS, "-m", cwd=root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (root / "outputs/multirun").glob("*/*")
    return sweep


def test_children_follow_their_operators(parents):
    a, b = parents / "0", parents / "1"
    click = {"run": str(b), "x": 48.0, "y": 16.0}  # image pixels of a 64×64 image
    children = plan_children([a, b], click, n=4, seed=7, radius=1.0)
    assert [c.operator for c in children] == ["local", "crossover", "local", "crossover"]
    assert children[0].parents == [str(b)] and children[1].parents == [str(a), str(b)]
    gene_b = read_gene(b)
    h, w = gene_b.shape  # vqgan_tiny: tokens (8, 8)
    centre = operators.click_to_grid((48.0, 16.0), (64, 64), (w, h))
    outside = ~operators.disc_mask(centre, 1.0, h, w)
    changed = children[0].latent != gene_b
    assert changed.any() and not changed[outside].any(), "a local child changes only near the click"
    again = plan_children([a, b], click, n=4, seed=7, radius=1.0)
    assert all(torch.equal(x.latent, y.latent) for x, y in zip(children, again, strict=True))
    with pytest.raises(UserError, match="Pick at least one favourite"):
        plan_children([], None, n=2, seed=0)


def test_the_next_generation_renders_each_child_from_its_gene(parents, tmp_path):
    children = plan_children([parents / "0", parents / "1"], None, n=2, seed=3)
    genes = write_genes(children, tmp_path / "genes")
    command = sweep_command(parents / "0", genes, tmp_path / "gen1")
    out = subprocess.run(
        command, cwd=tmp_path, env={**user_environment(), **OFFLINE}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for i, gene in enumerate(genes):
        job = tmp_path / "gen1" / str(i)
        assert torch.equal(load_file(str(job / "start_latent.safetensors"))["start_latent"],
                           load_file(str(gene))["start_latent"])  # fmt: skip
        assert (job / "final.png").is_file()
    assert not torch.equal(children[0].latent, children[1].latent)


def test_next_in_the_studio_launches_the_children_and_shows_their_lineage(parents):
    """The page's POST as a browser sends it: favourites 0 and 1, a click on 2, 3 children. The
    children render as a new sweep in studio/gen_1/sweep; its page shows each card's lineage."""
    import html
    import re
    import time

    from genart.studio.app import create_app
    from genart.studio.db import StudioStore, studio_dir

    client = create_app(parents).test_client()
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    click = '{"run": "2", "x": 40.0, "y": 20.0}'
    form = {"csrf": csrf, "gen": "0", "favourite": ["0", "1"], "click": click, "children": "3"}
    form["rank"] = "on"  # the page's default: the crossover child is the best of 4 bred
    r = client.post("/next", data=form)
    assert r.status_code == 303 and r.headers["Location"] == "/?gen=1"
    sweep = studio_dir(parents) / "gen_1" / "sweep"
    deadline = time.monotonic() + 300
    while len(list(sweep.glob("*/result.json"))) < 3 and time.monotonic() < deadline:
        assert "rendering:" in client.get("/?gen=1").get_data(as_text=True) or sweep.is_dir()
        time.sleep(1)
    log = (studio_dir(parents) / "gen_1" / "launch.log").read_text()
    assert len(list(sweep.glob("*/final.png"))) == 3, log[-3000:]
    page = html.unescape(client.get("/?gen=1").get_data(as_text=True))
    assert (
        "rendering:" not in page and page.count("local of") == 2 and page.count("crossover of") == 1
    )
    words = " ".join(page.split())
    assert "ranked by your picks: the bred children are the best 1 of 4 candidates" in words
    assert "(4 images seen, 2 chosen)" in words
    db = StudioStore(studio_dir(parents) / "studio.db")
    rows = [db.lineage(sweep / str(i)) for i in range(3)]
    db.close()
    assert [r["operator"] for r in rows] == ["local", "crossover", "local"]
    assert rows[1]["parents"] == [str(parents / "0"), str(parents / "1")]
    assert rows[0]["parents"] == [str(parents / "2")] and (
        rows[0]["click_x"],
        rows[0]["click_y"],
    ) == (40.0, 20.0)
    gene_2 = read_gene(parents / "2")
    h, w = gene_2.shape
    outside = ~operators.disc_mask(
        operators.click_to_grid((40.0, 20.0), (64, 64), (w, h)), 2.0, h, w
    )
    local = read_gene(sweep / "0")
    assert (local != gene_2).any() and torch.equal(local[outside], gene_2[outside])
    assert client.get("/file/gen_1/sweep/0/final.png").status_code == 200
    restarted = create_app(parents).test_client()  # a new studio process: disk and db suffice
    again = html.unescape(restarted.get("/?gen=1").get_data(as_text=True))
    assert again.count("local of gen 0 job 2 at") == 2 and "generations: " in again
    assert '<a href="/?gen=1">1</a>' in restarted.get("/").get_data(as_text=True)


def test_a_child_saved_as_a_preset_renders_the_same_image(parents, tmp_path):
    """A studio child (it started from a gene file under studio/) saved with `presets save`:
    the preset carries the gene beside it and reproduces the child pixel for pixel elsewhere."""
    import numpy as np
    from PIL import Image

    children = plan_children([parents / "0", parents / "1"], None, n=1, seed=5)
    genes = write_genes(children, tmp_path / "genes")
    out = subprocess.run(
        sweep_command(parents / "0", genes, tmp_path / "gen"), cwd=tmp_path,
        env={**user_environment(), **OFFLINE}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    child, elsewhere = tmp_path / "gen" / "0", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"GENART_PRESETS_DIR": str(tmp_path / "presets")}
    save = cli("genart.presets", "save", str(child), "--name", "child", cwd=tmp_path, env=env)
    assert save.returncode == 0, save.stderr[-3000:]
    run = cli("genart", "+preset=child", cwd=elsewhere, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (again,) = (elsewhere / "outputs").glob("2*/*")
    assert torch.equal(read_gene(again), children[0].latent)
    first, second = (np.asarray(Image.open(d / "final.png")) for d in (child, again))
    assert not np.array_equal(first, np.asarray(Image.open(parents / "0" / "final.png")))
    assert np.array_equal(first, second)


def test_without_ranking_no_model_is_fitted(parents, tmp_path, monkeypatch):
    """The switch off: Next breeds in order, builds no model and the page says nothing of taste."""
    import re

    import genart.studio.breed as breed
    from genart.studio.app import create_app
    from genart.studio.db import studio_dir

    monkeypatch.setattr(breed, "parent_models", lambda *a: pytest.fail("a model was built"))
    client = create_app(parents).test_client()
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").get_data(as_text=True))[1]
    r = client.post("/next", data={"csrf": csrf, "favourite": ["0", "1"], "children": "1"})
    k = int(r.headers["Location"].rsplit("=", 1)[1])
    assert not (studio_dir(parents) / f"gen_{k}" / "ranked.json").exists()
    assert "ranked by your picks" not in client.get(f"/?gen={k}").get_data(as_text=True)
