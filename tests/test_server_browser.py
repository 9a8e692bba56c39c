"""The web page in a real browser: Debian's chromium, driven by Selenium through chromedriver.

The page loads, text streams into it, a tune renders as sheet music (SVG notes drawn by abcjs,
fetched from the npm registry at its pinned version) and plays without a console error; and
both views fit a phone-sized screen. ``CHARGEN_SCREENSHOTS=DIR`` keeps screenshots of the views.
Skipped where chromium is not installed, unless ``CHARGEN_REQUIRE_BROWSER`` is set (CI sets it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from chargen.server import assets  # noqa: E402
from tests.server_helpers import live_server, train_runs  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CHARGEN_REQUIRE_BROWSER"):
        raise RuntimeError("CHARGEN_REQUIRE_BROWSER is set but chromium or chromedriver is missing")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page of a live server over a text run and a tune run, with abcjs cached."""
    folder = tmp_path_factory.mktemp("browser")
    cache = folder / "assets"
    try:
        assets.abcjs_file(cache)  # from the npm registry, checked, once for the module
    except assets.AssetError as exc:
        if os.environ.get("CHARGEN_REQUIRE_BROWSER"):
            raise
        pytest.skip(f"abcjs cannot be fetched here: {exc}")
    with live_server(train_runs(folder, hidden=512), cache=cache) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must download nothing
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, seconds: float = 60):
    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: condition(d))


def shoot(driver, name: str) -> None:
    folder = os.environ.get("CHARGEN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def severe(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_model(browser, page: str, model: str) -> None:
    """Load the page, wait for its list of models, and choose ``model``."""
    browser.get(page)
    wait(browser, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    Select(browser.find_element(By.ID, "model")).select_by_value(model)


def test_text_streams_into_the_page(browser, page):
    open_model(browser, page, "verse")
    assert browser.find_element(By.ID, "text-view").is_displayed()
    browser.find_element(By.ID, "prime").send_keys("The tide")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("4000")
    seed = browser.find_element(By.ID, "seed")
    seed.send_keys("3")
    browser.find_element(By.ID, "generate").click()
    seen = []

    def grows(driver):
        text = driver.find_element(By.ID, "output").text
        seen.append(len(text))
        return len(text) >= len("The tide") + 3000

    wait(browser, grows)
    assert len(set(seen)) > 2  # it came in pieces, not at once
    wait(browser, lambda d: d.find_element(By.ID, "generate").is_enabled())
    assert browser.find_element(By.ID, "output").text.startswith("The tide")
    shoot(browser, "text")
    assert severe(browser) == []


def test_the_stop_button_stops_the_stream(browser, page):
    open_model(browser, page, "verse")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("4000")
    browser.find_element(By.ID, "generate").click()
    wait(browser, lambda d: len(d.find_element(By.ID, "output").text) > 20)
    browser.find_element(By.ID, "stop").click()
    wait(browser, lambda d: d.find_element(By.ID, "status").text == "Stopped.")
    stopped = len(browser.find_element(By.ID, "output").text)
    assert stopped < 4000


def test_a_tune_renders_as_sheet_music_and_plays(browser, page):
    open_model(browser, page, "folk")
    assert browser.find_element(By.ID, "tune-view").is_displayed()
    browser.find_element(By.ID, "tune-seed").send_keys("2")
    Select(browser.find_element(By.ID, "rhythm")).select_by_visible_text("jig")
    browser.find_element(By.ID, "bars").send_keys("8")
    browser.find_element(By.ID, "parts").send_keys("2")
    browser.find_element(By.ID, "write-tunes").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".tune .sheet svg .abcjs-note"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".tune")
    assert len(cards) == 2 and "X:1" in cards[0].find_element(By.TAG_NAME, "pre").text
    for card in cards:  # the rhythm asked for, in the tune and in its caption
        assert "R:jig" in card.find_element(By.TAG_NAME, "pre").text
        assert card.find_element(By.CLASS_NAME, "caption").text.split(" · ")[0] == "jig"
    notes = cards[0].find_elements(By.CSS_SELECTOR, ".sheet svg .abcjs-note")
    assert len(notes) > 10
    assert browser.find_element(By.ID, "abcjs-note").is_displayed() is False
    midi = cards[0].find_element(By.LINK_TEXT, "MIDI").get_attribute("href")
    assert "/v1/tunes/" in midi and midi.endswith("/midi")
    play = cards[0].find_element(By.CSS_SELECTOR, "button.play")
    play.click()
    wait(browser, lambda d: play.text == "Stop", 20)
    audio = "const c = ABCJS.synth.activeAudioContext(); return c ? c.state : null"
    wait(browser, lambda d: d.execute_script(audio) == "running", 20)
    shoot(browser, "tunes")
    play.click()
    assert play.text == "Play"
    assert severe(browser) == []


def test_both_views_fit_a_phone_screen(browser, page):
    browser.set_window_size(390, 844)
    browser.get(page)
    wait(browser, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    for model in ("verse", "folk"):
        Select(browser.find_element(By.ID, "model")).select_by_value(model)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{model}: the page is {overflow}px wider than the screen"
    browser.find_element(By.ID, "write-tunes").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".tune .sheet svg"))
    shoot(browser, "tunes-phone")
