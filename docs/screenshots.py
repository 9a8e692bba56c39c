"""Screenshots of the web page for README.md: its text view and its tune view.

    python docs/screenshots.py --checkpoint-dir DIR --text RUN --tunes folk

Starts ``chargen serve`` over the two runs on 127.0.0.1, drives Debian's chromium through
Selenium (as the browser tests do), and writes docs/screenshots/text.png and tunes.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

OUT = Path(__file__).parent / "screenshots"


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1100,1000"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--tunes", required=True)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "chargen", "--checkpoint-dir",
                               args.checkpoint_dir, "serve", args.text, args.tunes,
                               "--port", str(args.port)])  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        driver = browser()
        wait = WebDriverWait(driver, 120)
        driver.get(url)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value"))
        OUT.mkdir(exist_ok=True)
        Select(driver.find_element(By.ID, "model")).select_by_value(args.text)
        driver.find_element(By.ID, "prime").send_keys("ROMEO:")
        driver.find_element(By.ID, "seed").send_keys("7")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "Done.")
        driver.save_screenshot(str(OUT / "text.png"))
        Select(driver.find_element(By.ID, "model")).select_by_value(args.tunes)
        Select(driver.find_element(By.ID, "rhythm")).select_by_visible_text("jig")
        Select(driver.find_element(By.ID, "style")).select_by_visible_text("irish")
        driver.find_element(By.ID, "meter").send_keys("6/8")
        driver.find_element(By.ID, "bars").send_keys("16")
        driver.find_element(By.ID, "parts").send_keys("2")
        driver.find_element(By.ID, "tune-seed").send_keys("7")
        driver.find_element(By.ID, "write-tunes").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".tune .sheet svg"))
        driver.save_screenshot(str(OUT / "tunes.png"))
        driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {OUT / 'text.png'} and {OUT / 'tunes.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
