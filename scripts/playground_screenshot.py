"""Check the serving playground once in headless Chromium and take the screenshot in docs/serving.md.

Needs Playwright and a Chromium (not project dependencies): pip install playwright; apt-get install chromium.
    hyperpelt serve RUN_DIR --port 8766 &
    python scripts/playground_screenshot.py http://127.0.0.1:8766/ docs/images/playground.png
It picks RTE, fills both fields, asks, prints the answer and any console errors, and saves the page.
"""
import shutil
import sys

from playwright.sync_api import sync_playwright

url, out = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium") or None, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 900, "height": 720})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("#task option", state="attached")
    page.select_option("#task", "rte")
    page.fill("#field-sentence1", "A man is sleeping on a couch in the living room.")
    page.fill("#field-sentence2", "A person rests.")
    page.click("#ask")
    page.wait_for_selector("#answer .label")
    print("info:", page.inner_text("#info"))
    print("answer:", page.inner_text("#answer"))
    print("console errors:", errors)
    page.screenshot(path=out, full_page=True)
    browser.close()
