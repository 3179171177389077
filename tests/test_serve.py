"""tasks serve / taskzoo.serve: the JSON API, bad requests, a bounded load test, the page in a real
browser, worker processes, the ONNX runtime and embedding in another ASGI application.

Every bundled task's /predict is also checked against ``tasks predict`` by the conformance kit
(`taskzoo.testing.TaskConformance.test_serves_what_predict_prints`)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import taskzoo
from taskzoo import serving
from taskzoo.plugins import PluginHost
from taskzoo.testing import http, http_json

QUICK = {"epochs": 1, "device": "cpu", "progress": False, "seed": 0}


def _sample(task: str, which: str = "train") -> Path:
    sample = PluginHost().task(task).sample
    return sample.path(getattr(sample, which) or sample.train)


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory, review_rows) -> taskzoo.Run:
    from conftest import write_csv

    data = write_csv(tmp_path_factory.mktemp("serve") / "reviews.csv", ["review", "sentiment"],
                     review_rows[:48] + review_rows[-48:])
    return taskzoo.train("sentiment", data, output=tmp_path_factory.mktemp("serve") / "sentiment", max_length=32,
                         batch_size=16, **QUICK)


@pytest.fixture(scope="module")
def sentiment_url(sentiment_run):
    with serving.background(serving.create_app(sentiment_run.folder, device="cpu", max_inputs=8,
                                               max_request_mb=0.05)) as url:
        yield url


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> taskzoo.Run:
    return taskzoo.train("segmentation", _sample("segmentation"), output=tmp_path_factory.mktemp("serve") / "seg",
                         image_size=64, batch_size=4, **QUICK)


@pytest.fixture(scope="module")
def segmentation_url(segmentation_run):
    with serving.background(serving.create_app(segmentation_run.folder, device="cpu")) as url:
        yield url


# -- the JSON API --------------------------------------------------------------------------------


def test_health_and_info_describe_the_run(sentiment_run, sentiment_url):
    health = http_json(f"{sentiment_url}/health")
    assert health == {"status": "ok", "model_loaded": True, "task": "sentiment", "runtime": "torch",
                      "backbone": sentiment_run.config["backbone"], "run": sentiment_run.folder.name}
    info = http_json(f"{sentiment_url}/info")
    assert info["labels"] == sentiment_run.config["resolved"]["labels"] and info["main_metric"] == "accuracy"
    assert info["main_metric_value"] == sentiment_run.metrics["best"] and info["inputs"]["json"]
    openapi = http_json(f"{sentiment_url}/openapi.json")
    body = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)


def test_predict_answers_what_the_run_predicts(sentiment_run, sentiment_url):
    texts = ["a wonderful hoppy stout, rich and smooth", "flat, sour and stale; poured it out"]
    answer = http_json(f"{sentiment_url}/predict", {"inputs": texts, "all_scores": True})
    assert answer["predictions"] == sentiment_run.predict(texts, device="cpu")
    assert [record["text"] for record in answer["predictions"]] == texts


def test_ner_and_recommendation_take_their_inline_inputs(tmp_path):
    ner = taskzoo.train("ner", _sample("ner"), output=tmp_path / "ner", max_length=64, batch_size=8, **QUICK)
    users = _sample("recommendation", "predict").read_text().split()[:3]
    recommender = taskzoo.train("recommendation", _sample("recommendation"), output=tmp_path / "rec", **QUICK)
    texts = ["Aspirin 81 mg was prescribed at Mayo Clinic", "Paris is lovely in spring"]
    with serving.background(serving.create_app(ner.folder, device="cpu")) as url:
        entities = http_json(f"{url}/predict", {"inputs": texts})["predictions"]
    assert entities == ner.predict(texts, device="cpu") and all("entities" in record for record in entities)
    with serving.background(serving.create_app(recommender.folder, device="cpu")) as url:
        answer = http_json(f"{url}/predict", {"inputs": users, "k": 3})["predictions"]
        assert answer == recommender.predict(users, k=3, device="cpu") and len(answer) == 9
        status, refused = http(f"{url}/predict", {"inputs": ["no-such-user-42"]})
        assert status == 422 and refused["field"] == "inputs" and "no-such-user-42" in refused["error"], refused
        item = answer[0]["item"]
        similar = http_json(f"{url}/predict", {"similar_to": [item], "k": 2})["predictions"]
        assert [row["item"] for row in similar] == [item, item] and len({row["similar_item"] for row in similar}) == 2


# -- bad requests: a 4xx naming the field, and the server goes on --------------------------------


def _raw(url: str, body: bytes | Any, content_type: str) -> tuple[int, dict]:
    """POST ``body`` (bytes, or an iterable of chunks sent with chunked transfer encoding, no length).
    A server may answer and close before it has read the whole body (a refused chunked form): the
    client's write then fails with a broken pipe, and the answer is read all the same."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("content-type", content_type)
        chunked = not isinstance(body, bytes)
        connection.putheader(*(("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))))
        connection.endheaders()
        try:
            if chunked:
                for chunk in body:
                    connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                connection.send(b"0\r\n\r\n")
            else:
                connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was read: the answer is waiting
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("body, status, field, words", [
    (b'{"inputs": ["good", }', 400, "body", "not valid JSON"),
    (b'["good beer"]', 422, "body", "expected a JSON object"),
    (b'{"input": ["good beer"]}', 422, "input", "unknown field 'input'"),
    (b'{"inputs": []}', 422, "inputs", "empty list"),
    (b'{"inputs": "good"}', 200, None, None),
    (b'{"inputs": ["good", 3.5]}', 422, "inputs[1]", "expected a string"),
    (b'{"inputs": ["good", "  "]}', 422, "inputs[1]", "empty string"),
    (b'{"inputs": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', 413, "inputs", "--max-inputs 8"),
    (b'{"inputs": ["good"], "all_scores": "maybe"}', 422, "all_scores", "all_scores"),
    (b'{"inputs": ["good"], "masks": "jpeg"}', 422, "masks", "png, rle"),
    (b'{"inputs": ["good"], "output": "/etc/passwd"}', 422, "output", "unknown field 'output'"),
    (b'{"inputs": ["' + b"x" * 60_000 + b'"]}', 413, "body", "--max-request-mb"),
    (b"\xff\xfe not text", 400, "body", "not"),
])
def test_bad_json_requests_are_a_4xx_naming_the_field(sentiment_url, body, status, field, words):
    code, answer = _raw(f"{sentiment_url}/predict", body, "application/json")
    assert code == status, answer
    if status != 200:
        assert answer["field"] == field and words in answer["error"], answer
    assert http_json(f"{sentiment_url}/health")["status"] == "ok"


def test_wrong_content_types_and_forms_are_refused(sentiment_url, segmentation_url, tmp_path):
    code, answer = _raw(f"{sentiment_url}/predict", b"inputs=good", "text/plain")
    assert code == 415 and answer["field"] == "content-type", answer
    # Sent in chunks, without a declared length: JSON is counted as it comes, a form is refused.
    code, answer = _raw(f"{sentiment_url}/predict", iter([b'{"inputs": ["', b"x" * 60_000, b'"]}']), "application/json")
    assert code == 413 and "--max-request-mb" in answer["error"], answer
    code, answer = _raw(f"{sentiment_url}/predict", iter([b'{"inputs": ["good"]}']), "application/json")
    assert code == 200 and len(answer["predictions"]) == 1, answer
    code, answer = _raw(f"{sentiment_url}/predict", iter([b"--x\r\n"]), "multipart/form-data; boundary=x")
    assert code == 411 and answer["field"] == "content-length", answer
    image = next(p for p in sorted(_sample("segmentation", "predict").iterdir()) if p.is_file())
    status, answer = http(f"{sentiment_url}/predict", files=[("image", image)])
    assert status == 422 and answer["field"] == "image" and "does not read images" in answer["error"], answer
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image needs")
    status, answer = http(f"{segmentation_url}/predict", files=[("image", image), ("image", broken)])
    assert status == 422 and answer["field"] == "image" and "broken.png" in answer["error"], answer
    status, answer = http(f"{segmentation_url}/predict", {"inputs": ["a street"]})
    assert status == 415 and "multipart form" in answer["error"], answer
    status, answer = http(f"{segmentation_url}/predict", fields={"masks": "png"})
    assert status == 422 and answer["field"] == "image", answer
    status, answer = http(f"{segmentation_url}/predict", files=[("photo", image)])
    assert status == 422 and answer["field"] == "photo", answer
    listing = tmp_path / "images.txt"
    listing.write_text(f"{image}\n")
    status, answer = http(f"{segmentation_url}/predict", files=[("file", listing)])
    assert status == 422 and answer["field"] == "file" and "takes images" in answer["error"], answer
    status, answer = http(f"{segmentation_url}/predict", files=[("file", image)])
    assert status == 200 and answer["predictions"][0]["image"] == image.name, answer
    assert http_json(f"{segmentation_url}/health")["status"] == "ok"


def test_masks_come_back_as_png_or_rle_and_match_predict(segmentation_run, segmentation_url):
    images = sorted(p for p in _sample("segmentation", "predict").iterdir() if p.is_file())[:2]
    expected = segmentation_run.predict(images[0].parent, device="cpu")
    by_name = {Path(record["image"]).name: record for record in expected}
    for masks in ("png", "rle"):
        answer = http_json(f"{segmentation_url}/predict", files=[("image", path) for path in images],
                           fields={"masks": masks})["predictions"]
        assert [record["image"] for record in answer] == [path.name for path in images]
        for record in answer:
            assert record["mask"]["format"] == masks
            assert (serving.decode_mask(record["mask"]) == by_name[record["image"]]["mask"]).all()
            assert record["classes"] == by_name[record["image"]]["classes"]


# -- load ----------------------------------------------------------------------------------------


def test_concurrent_clients_never_get_each_others_answers(sentiment_run, sentiment_url, review_rows):
    """500 requests from 16 clients, each text distinct: every answer is its own text's, no
    request fails, and the process's memory does not grow with the stream of requests."""
    import psutil

    texts = [f"{row[0]} (#{i})" for i, row in enumerate(random.Random(0).choices(review_rows, k=500))]
    expected = {record["text"]: record["prediction"] for record in sentiment_run.predict(texts, device="cpu")}

    def ask(text: str) -> tuple[str, dict, float]:
        started = time.perf_counter()
        status, answer = http(f"{sentiment_url}/predict", {"inputs": [text]})
        assert status == 200, answer
        return text, answer, time.perf_counter() - started

    process = psutil.Process()
    with ThreadPoolExecutor(16) as clients:
        list(clients.map(ask, texts[:50]))  # warm up: the allocator's pools fill once
        before = process.memory_info().rss
        started = time.perf_counter()
        results = list(clients.map(ask, texts))
        seconds = time.perf_counter() - started
    grown = (process.memory_info().rss - before) / 2**20
    for text, answer, _ in results:
        (record,) = answer["predictions"]
        assert record["text"] == text and record["prediction"] == expected[text]
    latencies = sorted(latency for *_, latency in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies))]
    print(f"\n500 requests from 16 clients in {seconds:.1f} s ({500 / seconds:.0f}/s): "
          f"latency p50 {1000 * p50:.0f} ms, p95 {1000 * p95:.0f} ms; memory {grown:+.0f} MiB")
    assert grown < 150, f"the server's memory grew by {grown:.0f} MiB over 500 requests"


# -- the page, in a real browser -----------------------------------------------------------------


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert binary and driver, "the page test needs Debian's chromium and chromium-driver (apt-get install ...)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_predicts_a_typed_text_and_draws_an_uploaded_image(sentiment_run, sentiment_url, segmentation_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    text = "a wonderful hoppy stout, rich and smooth"
    (expected,) = sentiment_run.predict([text], device="cpu")
    browser = _browser()
    try:
        browser.get(f"{sentiment_url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(shown.text_to_be_present_in_element((By.ID, "facts"), "accuracy"))
        assert sentiment_run.folder.name in browser.find_element(By.ID, "title").text
        browser.find_element(By.ID, "text").send_keys(text)
        browser.find_element(By.ID, "predict").click()
        wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "#result .prediction")))
        shown_text = browser.find_element(By.ID, "result").text
        assert expected["prediction"] in shown_text and text in shown_text, shown_text

        image = sorted(p for p in _sample("segmentation", "predict").iterdir() if p.is_file())[0]
        browser.get(f"{segmentation_url}/")
        wait.until(shown.visibility_of_element_located((By.ID, "images")))
        browser.find_element(By.ID, "images").send_keys(str(image))
        browser.find_element(By.ID, "predict").click()
        wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "#result canvas")))
        assert image.name in browser.find_element(By.ID, "result").text
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()


# -- the command, workers, ONNX, embedding -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_tasks_serve_with_two_workers_and_the_onnx_runtime(sentiment_run):
    port = _free_port()
    command = [sys.executable, "-m", "taskzoo", "serve", "--model", str(sentiment_run.folder), "--port", str(port),
               "--workers", "2", "--runtime", "onnx", "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if http(f"{url}/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tasks serve did not answer /health within 4 minutes"
            time.sleep(0.5)
        assert http_json(f"{url}/health")["runtime"] == "onnx"
        texts = ["a wonderful hoppy stout", "flat, sour and stale"]
        expected = [record["prediction"] for record in sentiment_run.predict(texts, device="cpu")]
        with ThreadPoolExecutor(4) as clients:
            answers = list(clients.map(lambda i: http_json(f"{url}/predict", {"inputs": texts}), range(8)))
        assert all([record["prediction"] for record in answer["predictions"]] == expected for answer in answers)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert f"http://127.0.0.1:{port}/" in output


def test_a_bad_serve_command_is_one_line(runner, tmp_path, sentiment_run):
    from taskzoo.cli import cli

    for args, words in ((["--model", str(tmp_path / "nope")], "nope"),
                        (["--model", str(sentiment_run.folder), "--port", "70000"], "--port"),
                        (["--model", str(sentiment_run.folder), "--max-inputs", "0"], "--max-inputs"),
                        ([], "--model")):
        result = runner.invoke(cli, ["serve", *args])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output
    with pytest.raises(taskzoo.UserError, match="--workers"):
        taskzoo.serve(sentiment_run, workers=0)


def test_the_app_mounts_inside_another_asgi_application(sentiment_run):
    from fastapi import FastAPI

    shop = FastAPI()
    shop.mount("/reviews", serving.create_app(sentiment_run, device="cpu"))
    with serving.background(shop) as url:
        assert http_json(f"{url}/reviews/health")["task"] == "sentiment"
        import urllib.request

        with urllib.request.urlopen(f"{url}/reviews/", timeout=30) as response:
            assert '<base href="/reviews/">' in response.read().decode()
        answer = http_json(f"{url}/reviews/predict", {"inputs": ["a wonderful hoppy stout"]})
        assert answer["predictions"][0]["text"] == "a wonderful hoppy stout"
