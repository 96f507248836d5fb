"""demo/web.py: the page in headless Chromium (Selenium), its HTTP API (gradio_client), bad input, the CLI.

One app is started for the module, as a user starts it (`python demo/web.py ... --port N`, 127.0.0.1), on the tiny
test model. Its class head is scaled so that random weights give scores spread over [0, 1]; the expected rows
come from `FastInstPredictor` in this process. Needs Debian's `chromium` and `chromium-driver` (.ci/run installs
them); without them the browser tests fail, they are not skipped.
"""

import importlib.util
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from fastinst.data.synthetic import render_image
from fastinst.predictor import FastInstPredictor, build_predictor_cfg
from tests.conftest import REPO

WEB = REPO / "demo" / "web.py"
TINY_YAML = REPO / "tests" / "fixtures" / "tiny.yaml"
ARTIFACTS = REPO / "output" / "test-artifacts"
MAX_PIXELS = 200 * 200  # the app's --max-pixels here: the test image fits, a 300 x 300 one does not
WAIT = 90  # seconds any one page change may take on a loaded 2-core machine (explicit waits, no sleeps)


@pytest.fixture(scope="module")
def web():
    """demo/web.py as a module (demo/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fastinst_web_demo", WEB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(build_predictor_cfg(TINY_YAML))
    state = model.state_dict()
    last = f"sem_seg_head.predictor.class_embed_layers.{model.sem_seg_head.predictor.num_layers}"
    for key in (f"{last}.layers.2.weight", f"{last}.layers.2.bias"):
        state[key] = state[key] * 12  # peaked class probabilities: scores spread over [0, 1]
    path = tmp_path_factory.mktemp("web") / "tiny.pth"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    rgb, _ = render_image(np.random.default_rng(3), (170, 190))
    path = tmp_path_factory.mktemp("web") / "shapes.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return FastInstPredictor(TINY_YAML, weights=checkpoint, score_threshold=0.0)


@pytest.fixture(scope="module")
def threshold(predictor, image_file):
    """A slider value (2 decimals) that 2-8 instances pass, no score within 0.002 of it."""
    scores = predictor(str(image_file)).scores.numpy()
    for t in np.arange(0.99, 0.0, -0.01).round(2):
        if 2 <= (scores >= t).sum() <= 8 and np.abs(scores - t).min() > 0.002:
            return float(t)
    raise AssertionError(f"no usable threshold for scores {scores[:10]}")


def display_scale(height, width):
    return max(1.0, 400 / max(height, width))  # web.DISPLAY_SIZE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint):
    """`python demo/web.py` on a free port; yields its printed address."""
    port = free_port()
    cmd = [
        sys.executable, str(WEB), "--config-file", str(TINY_YAML), "--port", str(port),
        "--max-pixels", str(MAX_PIXELS), "--opts", "MODEL.WEIGHTS", str(checkpoint),
    ]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    log = []
    try:
        while True:
            line = lines.get(timeout=180)
            log.append(line)
            if "web demo running at" in line:
                break
            assert proc.poll() is None, "".join(log)
        url = line.split(" at ")[1].split()[0]
        assert url == f"http://127.0.0.1:{port}/"  # binds 127.0.0.1 by default
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "Debian's chromium and chromium-driver are needed: apt-get install chromium chromium-driver "
        "(.ci/run does this)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


def expected_rows(predictor, image_file, threshold):
    """The table the page must show: the predictor's instances at `threshold` and their queries."""
    predictor.score_threshold = threshold
    try:
        instances = predictor(str(image_file))
        queries = predictor.explain(str(image_file)).instance_queries
    finally:
        predictor.score_threshold = 0.0
    rows = []
    for i in range(len(instances)):
        box = ", ".join(f"{v:.0f}" for v in instances.pred_boxes.tensor[i].tolist())
        rows.append(
            [
                str(i),
                predictor.class_name(int(instances.pred_classes[i])),
                f"{float(instances.scores[i]):.3f}".rstrip("0").rstrip("."),
                box,
                str(int(instances.pred_masks[i].sum())),
                str(int(queries[i])),
            ]
        )
    return rows


# -- the page in a browser ----------------------------------------------------------------------------------


def open_page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, WAIT).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]"))
    )


def upload(browser, path):
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def message_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "message").text


def wait_message(browser, *parts):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT).until(lambda b: all(p in message_text(b) for p in parts))
    return message_text(browser)


def table_rows(browser) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#instances div[role=row].virtual-row")
    return [[c.text for c in r.find_elements(By.CSS_SELECTOR, "[role=gridcell]")] for r in rows]


def test_page_in_browser(server, browser, predictor, image_file, threshold):
    """Upload, move the threshold: the picture and the table appear, the rows equal the predictor's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server)
    upload(browser, image_file)
    wait_message(browser, "shapes.png", "≥ 0.50", "prediction took")
    picture = browser.find_element(By.CSS_SELECTOR, "#picture img")
    WebDriverWait(browser, WAIT).until(lambda b: picture.get_property("naturalWidth") > 0)

    number = browser.find_element(By.CSS_SELECTOR, "#threshold input[data-testid=number-input]")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys(f"{threshold:.2f}", Keys.ENTER)
    expected = expected_rows(predictor, image_file, threshold)
    text = wait_message(browser, f"{len(expected)} instance", f"≥ {threshold:.2f}")
    assert f"(of {len(predictor(str(image_file)))})" in text
    WebDriverWait(browser, WAIT).until(lambda b: len(table_rows(b)) == len(expected))
    assert table_rows(browser) == expected
    height, width = cv2.imread(str(image_file)).shape[:2]
    scale = display_scale(height, width)  # small images are drawn larger
    picture = browser.find_element(By.CSS_SELECTOR, "#picture img")
    assert picture.get_property("naturalWidth") == pytest.approx(width * scale, abs=1)
    assert picture.get_property("naturalHeight") == pytest.approx(height * scale, abs=1)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_demo_instances.png"))
    # a row -> the query it came from, shown on the activation-map tab
    browser.find_element(By.CSS_SELECTOR, "#instances [data-testid='cell-1-1']").click()
    info = browser.find_element(By.ID, "query-info")
    WebDriverWait(browser, WAIT).until(lambda b: "came from query" in info.text)
    assert f"came from query {expected[1][5]} of 16" in info.text
    WebDriverWait(browser, WAIT).until(
        lambda b: (
            [
                img.get_property("naturalWidth")
                for img in b.find_elements(By.CSS_SELECTOR, "#activation img")
            ]
            == [round(width * scale)]
        )
    )
    browser.save_screenshot(str(ARTIFACTS / "web_demo_activation.png"))


def test_bad_input_shows_a_message_and_the_app_keeps_serving(server, browser, image_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    upload(browser, text_file)
    assert "notes.png is not an image" in wait_message(browser, "notes.png")
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((300, 300, 3), np.uint8))
    browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
    upload(browser, big)
    text = wait_message(browser, "big.png")
    assert (
        "big.png is 300 x 300 = 0.09 megapixels, more than this page's limit of 0.04 (--max-pixels)"
        in text
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "#picture img")
    # still serving: the next good image is predicted
    browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
    upload(browser, image_file)
    wait_message(browser, "shapes.png", "prediction took")
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#picture img"))


# -- the HTTP API ---------------------------------------------------------------------------------------------


def test_http_api(server, predictor, image_file, threshold):
    """gradio_client: /predict returns the picture, the table, the COCO json; two calls at once both finish."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    jobs = [
        client.submit(handle_file(str(image_file)), t, api_name="/predict")
        for t in (threshold, 0.0)
    ]
    (picture, activation, table, coco_file, message), everything = (j.result(WAIT) for j in jobs)
    expected = expected_rows(predictor, image_file, threshold)
    assert [[str(v) for v in row] for row in table["data"]] == expected
    assert table["headers"] == ["#", "class", "score", "box (x0, y0, x1, y1)", "area (px)", "query"]
    assert len(everything[2]["data"]) == len(predictor(str(image_file)))
    height, width = cv2.imread(str(image_file)).shape[:2]
    scale = display_scale(height, width)
    assert cv2.imread(picture).shape == pytest.approx((height * scale, width * scale, 3), abs=1)
    assert cv2.imread(activation).shape == (round(height * scale), round(width * scale), 3)
    assert f"{len(expected)} instance" in message

    predictor.score_threshold = threshold
    try:
        reference = predictor.to_coco_results(str(image_file))
    finally:
        predictor.score_threshold = 0.0
    results = json.loads(open(coco_file).read())
    assert len(results) == len(reference) == len(expected)
    for got, ref in zip(results, reference):
        assert got["segmentation"] == ref["segmentation"]
        assert (got["image_id"], got["category_id"], got["bbox"]) == (
            0,
            ref["category_id"],
            ref["bbox"],
        )
        assert got["score"] == pytest.approx(ref["score"], rel=1e-5)


# -- in-process pieces and the command line ------------------------------------------------------------------


def test_read_upload(web, image_file, tmp_path):
    rgb = web.read_upload(image_file, MAX_PIXELS)
    assert rgb.shape == cv2.imread(str(image_file)).shape and rgb.dtype == np.uint8
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(web.PageError, match=r"^empty.jpg is not an image"):
        web.read_upload(empty, MAX_PIXELS)
    height, width = rgb.shape[:2]
    with pytest.raises(web.PageError) as error:
        web.read_upload(image_file, 1000)
    assert str(error.value) == (
        f"shapes.png is {width} x {height} = {width * height / 1e6:.3g} megapixels, more than this "
        "page's limit of 0.001 (--max-pixels): use a smaller image."
    )


def test_command_line(web, tmp_path, monkeypatch, capsys):
    args = web.get_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    monkeypatch.setattr(web, "QUICKSTART_WEIGHTS", tmp_path / "output" / "model_final.pth")
    monkeypatch.setattr(web, "REPO", tmp_path)
    assert web.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: No model given and no quickstart model at output/model_final.pth: run `make quickstart` "
        "(trains one in about 10 minutes on a CPU) or pass --config-file CFG --opts MODEL.WEIGHTS PATH."
    ]
    assert web.main(["--config-file", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: Config file not found:")


def test_clicked_pixel_gives_the_best_instance_there(web, predictor, image_file, threshold):
    """A click on the picture selects the best-scored kept instance covering the pixel, and names its query."""
    demo = web.WebDemo(predictor, MAX_PIXELS)
    prediction = demo.predict(image_file)
    kept = demo.kept(prediction, threshold)
    masks = prediction.instances.pred_masks
    for i in kept:
        ys, xs = np.nonzero(masks[i].numpy() & ~masks[kept[kept < i]].numpy().any(0))
        if len(ys):  # a pixel of instance i that no better kept instance covers
            assert demo.instance_at(prediction, threshold, int(xs[0]), int(ys[0])) == i
    outside = ~masks[kept].numpy().any(0)
    ys, xs = np.nonzero(outside)
    if len(ys):
        assert demo.instance_at(prediction, threshold, int(xs[0]), int(ys[0])) is None
    q = int(prediction.queries[kept[0]])
    assert f"came from query **{q}** of 16" in demo.query_text(prediction, int(kept[0]))


def test_model_without_explanation(web, predictor, image_file, threshold):
    """An exported model (no nn.Module: the ONNX backend's interface) gets the page without the activation map."""

    class Graph:  # called as OnnxFastInst is: (image (3, h, w), height, width) -> Instances
        def __init__(self, model):
            self.model = model

        def __call__(self, image, height, width):
            with torch.no_grad():
                out = self.model([{"image": image, "height": height, "width": width}])[0]
            instances = out["instances"].to("cpu")
            instances.pred_masks = instances.pred_masks > 0.5
            return instances

    model, predictor.model = predictor.model, Graph(predictor.model)
    try:
        demo = web.WebDemo(predictor, MAX_PIXELS)
        assert not demo.can_explain
        prediction = demo.predict(image_file)
        assert prediction.explanation is None and demo.explain_view(prediction, threshold) is None
    finally:
        predictor.model = model
    rows = [[str(v) for v in row] for row in demo.table(prediction, threshold)]
    assert rows == [row[:5] + [""] for row in expected_rows(predictor, image_file, threshold)]
    height, width = cv2.imread(str(image_file)).shape[:2]
    scale = display_scale(height, width)
    assert demo.picture(prediction, threshold).shape == pytest.approx(
        (height * scale, width * scale, 3), abs=1
    )
