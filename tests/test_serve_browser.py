"""The web demo in a real browser: headless Chromium loads the page served by
`python -m llava_ov15.serve --ui` on a tiny model, uploads an image, asks, and sees the answer
stream in; a refused request shows the server's error message.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
selenium; skips, saying which is missing, only where they are not installed.
"""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the [serve] extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the test compares with the API through httpx")
pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium")

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER",
                              shutil.which("chromedriver") or "/usr/bin/chromedriver")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"Chromium ({CHROMIUM}) or chromedriver ({CHROMEDRIVER}) not installed: "
                "apt-get install chromium chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WORDS = ["what", "is", "this", "and", "now"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from llava_ov15.model import load_pipeline
    from llava_ov15.model.testing import save_tiny_checkpoint
    from llava_ov15.serve.app import ServeConfig, create_app
    from llava_ov15.serve.server import serve_in_thread

    d = tmp_path_factory.mktemp("browser")
    pipe = load_pipeline(save_tiny_checkpoint(d / "model", words=WORDS), device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "photo.png")
    (d / "notes.png").write_text("this is not an image\n")
    app = create_app(pipe, ServeConfig(model_name="tiny", ui=True, max_tokens_limit=64))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as api:
        yield {"base": base, "api": api, "dir": d}


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def api_answer(api, messages) -> str:
    r = api.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8,
                                               "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def submit(browser, question: str, image=None) -> None:
    if image is not None:
        browser.find_element(By.ID, "image-input").send_keys(str(image))
        WebDriverWait(browser, 10).until(
            lambda b: b.find_element(By.ID, "preview-box").is_displayed())
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("8")
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "send").click()


def finished_answers(browser) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR,
                                                  ".msg.assistant[data-done='true'] .text")]


def test_page_streams_the_greedy_answer_and_keeps_history(site, browser):
    browser.get(site["base"] + "/")
    assert "LLaVA-OneVision" in browser.title
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "model").text == "tiny")
    # Count DOM updates of the answer: a streamed answer is written piece by piece.
    browser.execute_script(
        "window.updates = 0; new MutationObserver(() => window.updates++).observe("
        "document.getElementById('history'), {subtree: true, childList: true,"
        " characterData: true});")
    submit(browser, "what is this", site["dir"] / "photo.png")
    WebDriverWait(browser, 60).until(lambda b: len(finished_answers(b)) == 1)
    [shown] = finished_answers(browser)
    uri = "data:image/png;base64," + base64.b64encode(
        (site["dir"] / "photo.png").read_bytes()).decode()
    first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                          {"type": "text", "text": "what is this"}]}]
    expected = api_answer(site["api"], first)
    assert shown == expected and expected
    assert browser.execute_script("return window.updates") > len(expected.split())
    assert not browser.find_element(By.ID, "error").is_displayed()

    # The second question is asked with the conversation so far, image included.
    submit(browser, "and now")
    WebDriverWait(browser, 60).until(lambda b: len(finished_answers(b)) == 2)
    history = [*first, {"role": "assistant", "content": expected},
               {"role": "user", "content": [{"type": "text", "text": "and now"}]}]
    assert finished_answers(browser)[1] == api_answer(site["api"], history)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history .msg")) == 4


def test_refused_request_shows_the_server_error(site, browser):
    browser.get(site["base"] + "/")
    submit(browser, "what is this", site["dir"] / "notes.png")
    err = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 30).until(lambda b: err.is_displayed())
    assert "not an image" in err.text
    assert browser.find_elements(By.CSS_SELECTOR, "#history .msg") == []
    # the question stays in the box, and the server still answers
    assert browser.find_element(By.ID, "question").get_attribute("value") == "what is this"
    browser.find_element(By.ID, "clear-image").click()
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda b: len(finished_answers(b)) == 1)
    assert not err.is_displayed()
