"""Refreshes the README's screenshots from the real UI: `python -m scripts.screenshots`.

Run from the repository root. It starts the sample lake under `dagster dev` as `make dev` does, in
a temporary folder of its own (free ports, fresh DAGSTER_HOME, the test suite's `running_lake`),
waits until the first start settles, and saves with headless Chromium:

- `docs/asset-graph.png`: the global asset lineage;
- `docs/asset-checks.png`: the check results of `silver/reviews`.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`)
and the `screenshots` extra (`pip install -e '.[screenshots]'`). No browser is downloaded:
Selenium drives /usr/bin/chromium through /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver, WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from deathmetal_lake_tests.lake_view import LakeState, LakeView
from deathmetal_lake_tests.live import running_lake

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=2000,1300",
)
SETTLE_TIMEOUT = 300.0
# The UI draws the graph after its GraphQL answers arrive and then lays it out: a fixed pause
# after the first node shows is what lets the layout finish before the picture is taken.
RENDER_SECONDS = 3.0


@contextmanager
def chromium(log: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(log)))
    try:
        yield driver
    finally:
        driver.quit()


def by_text(text: str) -> tuple[str, str]:
    """The innermost elements whose text contains `text` (React splits text into several nodes)."""
    return By.XPATH, f"//*[contains(., '{text}') and not(*[contains(., '{text}')])]"


def icon_button(icon: str) -> tuple[str, str]:
    """Buttons showing the Dagster UI icon named `icon` (its aria-label)."""
    return By.XPATH, f"//button[.//*[@role='img' and @aria-label='{icon}']]"


def click_last_visible(driver: WebDriver, locator: tuple[str, str], timeout: float = 15) -> None:
    """Clicks the last shown match: page-wide controls come first, the graph's own ones last."""

    def last_visible(driver: WebDriver) -> WebElement | None:
        shown = [e for e in driver.find_elements(*locator) if e.is_displayed()]
        return shown[-1] if shown else None

    WebDriverWait(driver, timeout).until(last_visible).click()
    time.sleep(1)  # the UI animates the change


def dismiss_community_dialog(driver: WebDriver) -> None:
    """The first visit asks to join the Dagster community; Skip closes it for good."""
    skip = (By.XPATH, "//button[normalize-space()='Skip']")
    try:
        WebDriverWait(driver, 15).until(expected_conditions.element_to_be_clickable(skip)).click()
    except TimeoutException:
        return  # not shown (already dismissed in this browser profile)
    WebDriverWait(driver, 10).until(expected_conditions.invisibility_of_element_located(skip))


def open_page(driver: WebDriver, url: str, shows: str) -> None:
    """Opens `url` and waits, past the community dialog, until the text `shows` is on it."""
    driver.get(url)
    dismiss_community_dialog(driver)
    WebDriverWait(driver, 60).until(
        expected_conditions.visibility_of_element_located(by_text(shows))
    )


def save(driver: WebDriver, out: Path) -> None:
    time.sleep(RENDER_SECONDS)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    print(f"saved {out}")


def asset_graph(driver: WebDriver, base_url: str, out: Path) -> None:
    """Every asset, grouped by layer: laid out top-down, the whole lake fits a landscape window."""
    open_page(driver, f"{base_url}/asset-groups", "gold")
    click_last_visible(driver, (By.XPATH, "//button[normalize-space()='Hide navigation']"))
    click_last_visible(driver, icon_button("panel_show_right"))  # hides the asset tree
    click_last_visible(driver, icon_button("settings"))  # the graph's settings menu
    click_last_visible(driver, by_text("vertical orientation"))
    click_last_visible(driver, by_text("Expand all groups"))
    click_last_visible(driver, icon_button("settings"))  # closes the menu
    WebDriverWait(driver, 30).until(
        expected_conditions.visibility_of_element_located(by_text("band_avg_scores"))
    )
    save(driver, out)


def asset_checks(driver: WebDriver, base_url: str, out: Path) -> None:
    """The checks of `silver/reviews` with their latest results, the first one opened."""
    open_page(driver, f"{base_url}/assets/silver/reviews?view=checks", "key_unique_not_null")
    save(driver, out)


def take_screenshots(base_url: str, out: Path, work: Path) -> None:
    with chromium(work / "chromedriver.log") as driver:
        asset_graph(driver, base_url, out / "asset-graph.png")
        asset_checks(driver, base_url, out / "asset-checks.png")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    parser.add_argument(
        "--url", help="a lake's UI already running (e.g. http://127.0.0.1:3000): start none"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lake-screenshots-") as tmp:
        work = Path(tmp)
        if args.url:
            take_screenshots(args.url.rstrip("/"), args.out, work)
            return 0
        with running_lake(work / "lake") as lake:
            view = LakeView(lake)
            state = view.wait_until(LakeState.settled, SETTLE_TIMEOUT, "the first start to settle")
            problems = view.problems(state)
            if problems:
                # A red lake makes misleading pictures: say why and leave the old ones.
                print("\n".join(problems) + "\n\n" + view.report(state), file=sys.stderr)
                return 1
            take_screenshots(lake.url, args.out, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
