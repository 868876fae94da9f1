"""Helpers of the serve tests: a real uvicorn server on loopback (127.0.0.1, a free port) around an engine, and
`mmfree generate` through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time


class LiveServer:
    """uvicorn serving ``app`` in a thread on a socket bound to 127.0.0.1:0; ``url`` is http://127.0.0.1:PORT."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.02)

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120, **kw)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def live(backend, **limits):
    """A LiveServer over ``Engine(backend, Limits(**limits))``; yields (server, engine)."""
    from mmfree.serve.app import create_app
    from mmfree.serve.engine import Engine, Limits
    from mmfree.serve.metrics import Metrics

    metrics = Metrics()
    engine = Engine(backend, Limits(**limits), metrics)
    server = LiveServer(create_app(engine, metrics, drain_timeout_s=30))
    try:
        yield server, engine
    finally:
        server.close()
        engine.close(timeout_s=0)


def generate_cli(*args) -> dict:
    """``mmfree generate ... --json`` through the CLI's own entry point; the printed JSON."""
    from mmfree.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["generate", *args, "--json"])
    assert rc == 0
    return json.loads(buf.getvalue())


def metrics(url: str) -> dict:
    """{(name, label values...): value} of every sample GET /metrics serves, parsed by prometheus_client."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return {(s.name, *sorted(s.labels.values())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
