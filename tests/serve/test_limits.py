"""Limits and bad input of `mmfree serve`: 400 naming the field, 404 for another model, 429 with Retry-After when
the queue is full, the request time-out (504, or an error event in a stream), a client that disconnects cancels
its stream, and a failing backend (a board that never finishes a pass) costs one request, not the server."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.serve.helpers import live, metrics

MODEL = "mmfree-default"


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 33}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 4096]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": list(range(1, 42))}, "prompt"),
    ({"prompt": ["two", "prompts"]}, "prompt"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"n": 2}, "n"),
    ({"logprobs": 1}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"stream": "yes"}, "stream"),
    ({"frobnicate": 1}, "frobnicate"),
], ids=lambda x: str(x)[:30])
def test_bad_field_is_400_naming_it(limited_server, body, param):
    req = dict({"model": MODEL, "prompt": "def ", "max_tokens": 2}, **body)
    r = httpx.post(limited_server.url + "/v1/completions", json=req)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_bad_requests_through_the_client_and_the_server_lives_on(limited_server):
    client = limited_server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="def ", max_tokens=1000)
    assert e.value.param == "max_tokens" and "--max-tokens" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="def ", max_tokens=2)
    assert e.value.param == "model" and e.value.code == "model_not_found"
    r = httpx.post(limited_server.url + "/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    ok = client.completions.create(model=MODEL, prompt="def ", max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason == "length" and len(ok.choices[0].model_extra["token_ids"]) == 3


@pytest.fixture(scope="module")
def limited_server(int_backend):
    with live(int_backend, max_tokens=32, max_prompt_tokens=40, max_queue=4) as (server, _):
        yield server


def _wait(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _health(server) -> dict:
    return httpx.get(server.url + "/health").json()


def test_queue_full_is_429_with_retry_after(int_backend):
    """One request decoding, one waiting (max_queue 1): the third is refused with 429 and Retry-After; once the
    first goes away (its client disconnects) the waiting one completes."""
    with live(int_backend, max_tokens=256, max_queue=1) as (server, engine):
        long = server.client().completions.create(model=MODEL, prompt="def ", max_tokens=256, temperature=0,
                                                  stream=True)
        next(iter(long))                                   # decoding now
        waiting = {}
        t = threading.Thread(target=lambda: waiting.update(r=httpx.post(
            server.url + "/v1/completions", json={"model": MODEL, "prompt": "import ", "max_tokens": 3,
                                                  "temperature": 0}, timeout=120)))
        t.start()
        _wait(lambda: _health(server)["queue_depth"] == 1, what="the second request to queue")
        r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
        with pytest.raises(openai.RateLimitError):
            server.client().completions.create(model=MODEL, prompt="x", max_tokens=2)
        long.close()                                       # the client goes away: its stream is cancelled
        t.join(timeout=120)
        assert waiting["r"].status_code == 200 and len(waiting["r"].json()["choices"][0]["token_ids"]) == 3
        m = metrics(server.url)
    assert m[("mmfree_requests_total", "rejected")] == 2 and m[("mmfree_requests_total", "cancelled")] == 1


def test_request_timeout(int_backend):
    """A 0.2 s time-out cannot hold 256 tokens of the integer reference: 504 for a plain request, an error event
    for a stream (the OpenAI client raises it), and the server answers the next request."""
    with live(int_backend, max_tokens=256, request_timeout_s=0.2) as (server, _):
        r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "def ", "max_tokens": 256},
                       timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with pytest.raises(openai.APIError, match="time-out"):
            for _ in server.client().completions.create(model=MODEL, prompt="def ", max_tokens=256, stream=True):
                pass
        assert metrics(server.url)[("mmfree_requests_total", "timeout")] == 2
        assert _health(server)["status"] == "ok"


def test_disconnect_cancels_the_stream(int_backend):
    """A streaming client that goes away after two chunks: its request stops within a few tokens (not the 256 it
    asked for) and the loop serves the next request."""
    with live(int_backend, max_tokens=256) as (server, _):
        with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                          json={"model": MODEL, "prompt": "def ", "max_tokens": 256, "stream": True}) as r:
            got = 0
            for ln in r.iter_lines():
                got += ln.startswith("data:")
                if got == 2:
                    break
        _wait(lambda: metrics(server.url)[("mmfree_requests_total", "cancelled")] == 1,
              what="the request to be cancelled")
        assert 2 <= metrics(server.url)[("mmfree_completion_tokens_total",)] < 256
        ok = server.client().completions.create(model=MODEL, prompt="def ", max_tokens=2, temperature=0)
        assert ok.choices[0].finish_reason == "length"


def test_disconnect_cancels_a_plain_request(int_backend):
    """A non-streaming client that gives up after 1 s: the server notices the closed connection and stops
    decoding its request."""
    with live(int_backend, max_tokens=256) as (server, _):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", timeout=httpx.Timeout(10, read=1.0),
                       json={"model": MODEL, "prompt": "def ", "max_tokens": 256})
        _wait(lambda: metrics(server.url)[("mmfree_requests_total", "cancelled")] == 1,
              what="the request to be cancelled")
        assert metrics(server.url)[("mmfree_completion_tokens_total",)] < 256


def test_failing_backend_costs_one_request(int_backend):
    """The board backend on a simulated board that swallows the first START (the pass never finishes): that
    request gets 500 naming the time-out, the next one is served, and its tokens are the reference's."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.rtl import regmap as RM
    from mmfree.serve.engine import BoardModel, ReferenceBackend
    from mmfree.sim.accel import DEFAULT_HW
    from mmfree.sim.emulator import EmulatedBoard

    class StuckOnce(EmulatedBoard):
        swallowed = False

        def write32(self, offset, value):
            if offset == RM.OFFSET["CONTROL"] and value & RM.CTRL_START and not self.swallowed:
                self.swallowed = True
                return
            super().write32(offset, value)

    opened = open_model("default")
    acc = Accelerator(StuckOnce(DEFAULT_HW), opened, timeout_s=0.05, write_logits=True)
    backend = ReferenceBackend("board", BoardModel(acc, opened[1]), MODEL, int_backend.tok_dir)
    with live(backend) as (server, _):
        client = server.client()
        with pytest.raises(openai.InternalServerError, match="did not finish"):
            client.completions.create(model=MODEL, prompt="def ", max_tokens=4, temperature=0)
        ok = client.completions.create(model=MODEL, prompt="def ", max_tokens=4, temperature=0)
        assert metrics(server.url)[("mmfree_requests_total", "error")] == 1
    from mmfree.pymodel.generate import generate
    from mmfree.pymodel.intmodel import IntBackend

    ref = generate(IntBackend(int_backend.model), int_backend.tokenizer.encode("def "), 4, eos_id=2)
    assert ok.choices[0].model_extra["token_ids"] == ref.tokens


def _slow_board_backend(int_backend, pass_s: float, pass_timeout_s: float, started):
    """The board backend on a simulated board whose START write takes ``pass_s`` seconds (a long pass in flight);
    the backend's pass time-out says ``pass_timeout_s``."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.rtl import regmap as RM
    from mmfree.serve.engine import BoardModel, ReferenceBackend
    from mmfree.sim.accel import DEFAULT_HW
    from mmfree.sim.emulator import EmulatedBoard

    class SlowStart(EmulatedBoard):
        def write32(self, offset, value):
            if offset == RM.OFFSET["CONTROL"] and value & RM.CTRL_START:
                started.set()
                time.sleep(pass_s)
            super().write32(offset, value)

    opened = open_model("default")
    acc = Accelerator(SlowStart(DEFAULT_HW), opened, timeout_s=60, write_logits=True)
    backend = ReferenceBackend("board", BoardModel(acc, opened[1]), MODEL, int_backend.tok_dir)
    backend.pass_timeout_s = pass_timeout_s
    return backend


@pytest.mark.parametrize("pass_s, pass_timeout_s, stops", [(6.0, 30.0, True), (7.5, 0.5, False)])
def test_close_waits_for_the_pass_in_flight(int_backend, pass_s, pass_timeout_s, stops):
    """Shutting down (close with no drain time) while a pass runs longer than 5 s: the engine waits for the pass,
    up to the backend's pass time-out + 5 s, and says whether the decode thread stopped; only then may the server
    close the accelerator under it (`mmfree serve` leaves it open otherwise)."""
    import threading

    from mmfree.serve.engine import Engine, Limits

    started = threading.Event()
    backend = _slow_board_backend(int_backend, pass_s, pass_timeout_s, started)
    engine = Engine(backend, Limits(max_tokens=8))
    job = engine.submit(engine.prepare([1, 2, 3], 8, temperature=0))
    assert started.wait(timeout=60)
    t0 = time.monotonic()
    assert engine.close(timeout_s=0) is stops
    waited = time.monotonic() - t0
    if stops:
        assert job.finish_reason == "cancelled" and waited < pass_s + 1
    else:
        assert pass_timeout_s + 5 - 0.5 < waited < pass_s
    backend.close() if stops else engine._thread.join(timeout=60)
