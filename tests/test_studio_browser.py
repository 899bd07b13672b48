"""The studio in headless Chromium, as a user drives it (slow tier; under CI=true a missing
browser fails): open it on a 4-image sweep, tick 2 images, click a point on a third, press Next,
wait for the new generation, check its cards' lineage and its children's genes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from genart.studio import operators
from genart.studio.breed import read_gene
from genart.studio.db import StudioStore, studio_dir
from tests.conftest import OFFLINE, TINY, cli, user_environment
from tests.test_gallery import chromium, require_browser

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pick_two_click_a_third_press_next_and_see_the_children(tmp_path):
    require_browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = cli("genart", *TINY, "size=[64,64]", "steps=2", "cutouts.cutn=2", "seed=0,1,2,3", "-m",
              cwd=tmp_path, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs/multirun").glob("*/*")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "genart.studio", str(sweep), "--port", str(port)],
        env={**user_environment(), **OFFLINE}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with chromium(tmp_path / "profile") as driver:
            driver.get(url)
            assert len(driver.find_elements(By.CSS_SELECTOR, ".card")) == 4
            for job in ("0", "1"):
                driver.find_element(
                    By.CSS_SELECTOR, f'input[name="favourite"][value="{job}"]'
                ).click()
            image = driver.find_element(By.CSS_SELECTOR, 'img[data-run="2"]')
            shown = image.size["width"]
            # a point 3/4 across and 1/4 down the third image (offsets are from its centre)
            ActionChains(driver).move_to_element_with_offset(
                image, shown // 4, -shown // 4
            ).click().perform()
            children = driver.find_element(By.NAME, "children")
            children.clear()
            children.send_keys("3")
            driver.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
            WebDriverWait(driver, 300, poll_frequency=1).until(
                lambda d: (
                    "gen=1" in d.current_url
                    and not d.find_elements(By.ID, "progress")
                    and len(d.find_elements(By.CSS_SELECTOR, ".card img")) == 3
                )
            )
            lineage = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".lineage")]
            assert sum(t.startswith("local of gen 0 job 2 at") for t in lineage) == 2, lineage
            assert (
                sum(t.startswith("crossover of gen 0 job 0, gen 0 job 1") for t in lineage) == 1
            ), lineage
            ranked = driver.find_element(By.ID, "ranked").text  # the switch is on by default
            assert ranked.startswith("ranked by your picks"), ranked
            loaded = (
                "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
            assert driver.execute_script(loaded)
            shot = tmp_path / "studio.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("GENART_STUDIO_SCREENSHOT"):  # the closing note's screenshot
                shutil.copy(shot, os.environ["GENART_STUDIO_SCREENSHOT"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    gen = studio_dir(sweep) / "gen_1" / "sweep"
    db = StudioStore(studio_dir(sweep) / "studio.db")
    rows = [db.lineage(gen / str(i)) for i in range(3)]
    db.close()
    print(
        "lineage:",
        [(r["operator"], r["parents"], r["click_x"], r["click_y"], r["seed"]) for r in rows],
    )
    assert [r["operator"] for r in rows] == ["local", "crossover", "local"]
    assert rows[1]["parents"] == [str(sweep / "0"), str(sweep / "1")]
    assert rows[0]["parents"] == [str(sweep / "2")]
    x, y = rows[0]["click_x"], rows[0]["click_y"]
    assert 40 < x < 56 and 8 < y < 24, "the click landed 3/4 across, 1/4 down a 64-px image"
    parent = read_gene(sweep / "2")
    h, w = parent.shape
    outside = ~operators.disc_mask(operators.click_to_grid((x, y), (64, 64), (w, h)), 2.0, h, w)
    for i in (0, 2):  # local children change only near the click
        child = read_gene(gen / str(i))
        assert (child != parent).any() and torch.equal(child[outside], parent[outside])
    crossed = read_gene(gen / "1")
    assert crossed.shape == parent.shape and not torch.equal(crossed, read_gene(sweep / "0"))
