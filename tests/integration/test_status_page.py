"""The status page in a real headless browser, against a real cluster: what a person
opening `http://<node>/` sees once the page has its data. A screenshot is kept in
`artifacts/status-page.png` (git-ignored) and in the test's tmp dir."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.browser import headless_chromium
from tests.integration.harness import REPO_ROOT, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]

ARTIFACT = REPO_ROOT / "artifacts" / "status-page.png"


@pytest.fixture
def browser() -> Iterator:  # type: ignore[type-arg]
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_status_page_shows_the_cluster(cluster: Cluster, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    stop = threading.Event()

    def writes() -> None:  # a steady trickle through both nodes, so the charts move
        i = 0
        while not stop.is_set():
            cluster.put((leader, follower)[i % 2], f"page{i % 10}", b"v")
            i += 1
            stop.wait(0.01)

    writer = threading.Thread(target=writes)
    writer.start()
    try:
        browser.get(cluster.url(follower) + "/")  # any node serves it; this one forwards
        wait = WebDriverWait(browser, 20, poll_frequency=0.2)

        def rows(driver):  # type: ignore[no-untyped-def]
            found = driver.find_elements(By.CSS_SELECTOR, "#members tbody tr")
            return found if len(found) == 3 else None

        wait.until(rows)
        wait.until(lambda d: d.find_element(By.ID, "writes-now").text not in ("\u2013", "0.0"))
        wait.until(lambda d: "/" in d.find_element(By.ID, "latency-now").text)
        for chart in ("writes-chart", "latency-chart"):  # a few seconds of lines drawn
            wait.until(
                lambda d, c=chart: (
                    int(d.find_element(By.ID, c).get_attribute("data-points") or 0) >= 4
                )
            )
    finally:
        stop.set()
        writer.join(timeout=10)
    assert float(browser.find_element(By.ID, "writes-now").text) > 0
    assert browser.find_element(By.ID, "node").text == follower
    assert browser.find_element(By.ID, "leader").text == leader
    assert browser.find_element(By.ID, "term").text == str(cluster.status(leader)["term"])
    table = {
        row.get_attribute("data-id"): row.find_element(By.CSS_SELECTOR, "td.role").text
        for row in browser.find_elements(By.CSS_SELECTOR, "#members tbody tr")
    }
    assert table == {n: ("leader" if n == leader else "follower") for n in cluster.nodes}
    leader_row = browser.find_element(By.CSS_SELECTOR, "tr.leader")
    assert leader_row.get_attribute("data-id") == leader and "★" in leader_row.text
    changes = browser.find_element(By.ID, "changes").text
    assert f"{leader} won the election" in changes, changes
    assert not browser.find_element(By.ID, "error").is_displayed()
    shot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(shot))
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
