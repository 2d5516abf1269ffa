"""OpenAI-compatible server on a tiny model: answers, streaming, batching, refusals, disconnects.

One uvicorn server on a free loopback port serves the whole module (real HTTP, real SSE).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the [serve] extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the API tests talk HTTP through httpx")

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["what", "is", "this", "describe", "the", "picture"]
URL = "/v1/chat/completions"


def png(seed: int, size=(60, 40)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data needed to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def ask(text: str, *images: str, **kw) -> dict:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return {"messages": [{"role": "user", "content": [*content, {"type": "text", "text": text}]}],
            "max_tokens": 8, **kw}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    root, outside = d / "images", d / "private"
    root.mkdir()
    outside.mkdir()
    (root / "good.png").write_bytes(png(0))
    good = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.png").write_text("not an image\n")
    (outside / "secret.png").write_bytes(png(1))
    (root / "link.png").symlink_to(outside / "secret.png")
    return {"dir": d, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def pipe(files):
    from llava_ov15.model import load_pipeline
    from llava_ov15.model.testing import save_tiny_checkpoint

    model_dir = save_tiny_checkpoint(files["dir"] / "model", words=WORDS)
    return load_pipeline(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(pipe, files):
    from llava_ov15.serve.app import ServeConfig, create_app
    from llava_ov15.serve.server import serve_in_thread

    cfg = ServeConfig(model_name="tiny", image_roots=(files["root"].resolve(),), max_batch=4,
                      max_tokens_limit=4000, max_images=2, gather_ms=30)
    app = create_app(pipe, cfg)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        client.app = app
        yield client


def answer(server, body) -> dict:
    r = server.post(URL, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse(server, body) -> list:
    with server.stream("POST", URL, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def scheduler(server):
    return server.app.state.scheduler


def test_chat_completion_matches_infer_cli(server, pipe, files):
    body = ask("what is this", data_uri(png(0)))
    out = answer(server, body)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == "tiny" and isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    # the reference: the infer CLI, run as a user runs it
    cli = subprocess.run([sys.executable, "-m", "llava_ov15.infer", "--model",
                          str(files["dir"] / "model"), "--image", str(files["root"] / "good.png"),
                          "--prompt", "what is this", "--max-new-tokens", "8", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
    assert cli.returncode == 0, cli.stderr
    cli_answer = cli.stdout.strip()
    assert choice["message"]["content"] == cli_answer and cli_answer
    n_prompt = len(pipe.encode([{"role": "user", "content": [
        {"type": "image", "image": Image.open(files["root"] / "good.png")},
        {"type": "text", "text": "what is this"}]}])["input_ids"])
    words = len(cli_answer.split())
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": words,
                            "total_tokens": n_prompt + words}
    # the same file through the allow-listed root, as a path and as a file:// URL
    for url in (str(files["root"] / "good.png"), (files["root"] / "good.png").as_uri()):
        got = answer(server, ask("what is this", url))
        assert got["choices"][0]["message"]["content"] == cli_answer


def test_models_and_health(server):
    models = server.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["active"] == 0
    assert server.get("/").status_code == 404  # the web demo is off without --ui


def test_stream_sends_openai_chunks_with_the_same_answer(server):
    body = ask("describe the picture", data_uri(png(2)), max_tokens=10)
    whole = answer(server, body)
    chunks = sse(server, {**body, "stream_options": {"include_usage": True}})
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == whole["choices"][0]["finish_reason"] and not any(finals[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_stop_string_cuts_the_answer_in_both_modes(server):
    body = ask("what is this", max_tokens=8)
    full = answer(server, body)["choices"][0]["message"]["content"]
    stop = full.split()[1]
    expected = full[:full.index(stop)]
    out = answer(server, {**body, "stop": [stop, "never-seen"]})
    assert out["choices"][0] == {"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": expected}}
    chunks = sse(server, {**body, "stop": stop})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected


def test_concurrent_requests_are_batched_and_answer_as_alone(server):
    bodies = [ask("what is this", data_uri(png(3)), max_tokens=6),
              ask("describe the picture", max_tokens=9),
              ask("this", data_uri(png(4), "image/png"), data_uri(png(5, (30, 70))),
                  max_tokens=7),
              ask("the picture is what", max_tokens=5)]
    alone = [answer(server, b)["choices"][0] for b in bodies]
    blocker = ask("is", max_tokens=300)  # keeps the worker busy so the four queue up together
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(answer, server, blocker)
        time.sleep(0.1)
        together = [f.result()["choices"][0] for f in [pool.submit(answer, server, b)
                                                       for b in bodies]]
        first.result()
    assert together == alone
    assert scheduler(server).stats["largest_batch"] >= 3


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(server):
    body = ask("what is this", data_uri(png(6)), temperature=1.5, top_p=0.95, seed=11,
               max_tokens=8)
    a = answer(server, body)["choices"][0]["message"]["content"]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda b: answer(server, b),
                                [ask("describe the picture", max_tokens=12), body, body]))
    assert [r["choices"][0]["message"]["content"] for r in results[1:]] == [a, a]
    others = {answer(server, {**body, "seed": s})["choices"][0]["message"]["content"]
              for s in (1, 2, 3)}
    assert len(others | {a}) > 1  # the seed matters


def _bad_cases(files):
    good = data_uri(png(0))
    long_prompt = " ".join(["what"] * 4200)
    return {
        "invalid_json": ({"content": b'{"messages": [', "headers": {
            "content-type": "application/json"}}, 400, "invalid JSON"),
        "unknown_field": ({"json": {**ask("hi"), "max_token": 5}}, 400, "max_token"),
        "unknown_nested_field": ({"json": {"messages": [{"role": "user", "content": "hi",
                                                         "mood": "x"}]}}, 400, "mood"),
        "n_above_one": ({"json": {**ask("hi"), "n": 2}}, 400, "n"),
        "not_an_image": ({"json": ask("hi", data_uri(b"plain text"))}, 400, "not an image"),
        "truncated_image": ({"json": ask("hi", str(files["root"] / "truncated.png"))}, 400,
                            "truncated"),
        "text_file_as_image": ({"json": ask("hi", str(files["root"] / "notes.png"))}, 400,
                               "not an image"),
        "bad_base64": ({"json": ask("hi", "data:image/png;base64,@@@")}, 400, "base64"),
        "decompression_bomb": ({"json": ask("hi", data_uri(bomb_png(40000, 40000)))}, 400,
                               "decompression bomb"),
        "path_outside_roots": ({"json": ask("hi", str(files["outside"] / "secret.png"))}, 400,
                               "outside the allowed"),
        "dotdot_out_of_root": ({"json": ask("hi", f"{files['root']}/../private/secret.png")},
                               400, "outside the allowed"),
        "symlink_out_of_root": ({"json": ask("hi", str(files["root"] / "link.png"))}, 400,
                                "outside the allowed"),
        "file_url_outside": ({"json": ask("hi", (files["outside"] / "secret.png").as_uri())},
                             400, "outside the allowed"),
        "relative_path": ({"json": ask("hi", "good.png")}, 400, "absolute"),
        "http_url": ({"json": ask("hi", "http://127.0.0.1:9/x.png")}, 400, "not fetched"),
        "https_url": ({"json": ask("hi", "https://example.com/x.png")}, 400, "not fetched"),
        "prompt_too_long": ({"json": ask(long_prompt)}, 400, "context"),
        "prompt_plus_max_tokens_too_long": ({"json": ask(" ".join(["what"] * 3000),
                                                         max_tokens=2000)}, 400, "context"),
        "max_tokens_over_limit": ({"json": ask("hi", max_tokens=5000)}, 400, "--max-tokens-limit"),
        "too_many_images": ({"json": ask("hi", good, good, good)}, 400, "at most 2"),
        "unknown_model": ({"json": {**ask("hi"), "model": "gpt-4"}}, 404, "not found"),
        "empty_messages": ({"json": {"messages": []}}, 400, "messages"),
    }


def test_bad_input_gets_a_json_4xx_and_the_server_stays_up(server, files):
    for name, (kw, status, needle) in _bad_cases(files).items():
        r = server.post(URL, **kw)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, name
        if name != "too_many_images" and any(w in name for w in ("image", "url", "path", "root")):
            assert err["param"].startswith("messages[0].content["), (name, err)
        assert needle in err["message"], (name, err)
        assert "Traceback" not in r.text
    assert server.get("/health").json()["active"] == 0
    assert answer(server, ask("what is this", max_tokens=3))["choices"][0]["message"]["content"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_pixel_limit_is_a_4xx(server, monkeypatch):
    """Between Pillow's limit and twice it Pillow only warns; the server refuses there too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * 40 - 1)
    r = server.post(URL, json=ask("hi", data_uri(png(0))))
    assert r.status_code == 400 and "over the limit" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "image_too_large"


def test_unknown_route_is_a_json_404(server):
    r = server.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_client_disconnect_mid_stream_frees_its_slot(server):
    sched = scheduler(server)
    tokens_before = sched.stats["tokens"]
    with server.stream("POST", URL, json={**ask("describe the picture", max_tokens=3000),
                                          "stream": True}) as r:
        assert r.status_code == 200
        # Keep the line iterator referenced: dropping it would close the connection here.
        lines = r.iter_lines()
        got = []
        while len(got) < 2:
            line = next(lines)
            if '"content": "' in line and '"content": ""' not in line:
                got.append(line)
        assert sched.active == 1, (got, sched.stats)
    deadline = time.monotonic() + 10
    while sched.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sched.active == 0
    assert sched.stats["tokens"] - tokens_before < 3000  # stopped, not run to the end
    assert answer(server, ask("what is this", max_tokens=3))["choices"][0]["finish_reason"]


def test_waiting_request_whose_client_left_is_dropped(pipe):
    """A job cancelled while queued never reaches the model and leaves the count at once."""
    from llava_ov15.serve.scheduler import Job, Scheduler

    sched = Scheduler(pipe, max_batch=2)  # not started: jobs stay queued
    events = []
    job = Job([1, 2, 3], None, None, 4, sink=events.append)
    assert sched.submit(job) and sched.active == 1
    sched.cancel(job)
    assert sched.active == 0 and job.finish_reason == "cancelled"
    sched.start()
    done = threading.Event()
    live = Job([1, 2, 3], None, None, 3, sink=lambda ev: ev[0] == "done" and done.set())
    assert sched.submit(live) and done.wait(30)
    sched.stop()
    assert sched.stats["rows"] == 1 and events == []


def test_holdback_keeps_a_possible_stop_prefix():
    from llava_ov15.serve.scheduler import _holdback

    assert _holdback("hello wor", ["world"]) == 3
    assert _holdback("hello", ["world"]) == 0
    assert _holdback("ab", ["b", "abc"]) == 2


def test_serve_cli_bad_arguments_are_one_line_errors(tmp_path, files, capsys):
    from llava_ov15.serve.__main__ import main

    model = str(files["dir"] / "model")
    for argv, needle in ((["--model", str(tmp_path / "nope")], "no such directory"),
                         (["--model", str(tmp_path)], "no config.json"),
                         (["--model", model, "--image-root", str(tmp_path / "x")],
                          "--image-root"),
                         (["--model", model, "--max-batch", "0"], "--max-batch")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_serve_cli_without_fastapi_names_the_extra(files, monkeypatch, capsys):
    from llava_ov15.serve.__main__ import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # what a missing package looks like
    assert main(["--model", str(files["dir"] / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fastapi" in err and "pip install 'llava-ov15[serve]'" in err and "\n" not in err
