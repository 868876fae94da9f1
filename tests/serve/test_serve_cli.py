"""The `mmfree serve` command: --help, one clear error per bad flag, and a real server process on 127.0.0.1 that
drains its in-flight requests on SIGTERM and exits 0, leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from mmfree.cli import main

MODEL = "mmfree-default"


def test_help_explains_everything(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("/v1/completions", "/metrics", "/health", "--backend", "--board", "--draft", "--max-queue", "429",
                 "--request-timeout", "--max-tokens", "--max-prompt-tokens", "SIGTERM", "one stream at a time",
                 "--port", "--max-streams"):
        assert word in out, word


@pytest.mark.parametrize("argv,msg", [
    (["--max-streams", "4"], "--max-streams"),
    (["--port", "70000"], "--port"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--max-prompt-tokens", "0"], "--max-prompt-tokens"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--pass-timeout", "-1"], "--pass-timeout"),
    (["--board", "sim"], "--board"),
    (["--backend", "board"], "--board"),
    (["--backend", "float", "--draft", "trigram"], "--draft trigram"),
    (["--backend", "float", "--trigram-table", "t.bin"], "--trigram-table"),
    (["--trigram-table", "/nonexistent/t.bin"], "t.bin"),
    (["--max-draft", "0"], "--max-draft"),
    (["--bitstream", "x.bit"], "--bitstream"),
    (["--backend", "board", "--board", "kv260"], "--bitstream"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--host", "no-such-host.invalid"], "--host"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_flag_is_one_clear_error(capsys, argv, msg):
    assert main(["serve", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmfree serve: error: ") and msg in err[0], err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--backend", "gpu"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_port_in_use_is_one_clear_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port), "--draft", "none"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def _start(*args) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "mmfree.cli", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    line = proc.stdout.readline()                      # "... listening on http://127.0.0.1:PORT ..."
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(f"the server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def test_sigterm_drains_in_flight_requests_then_exits():
    """A stream and a queued request are in flight when SIGTERM arrives: both complete in full, new connections
    are refused, the process exits 0 and is gone."""
    proc, port = _start("--backend", "int", "--max-tokens", "64")
    url = f"http://127.0.0.1:{port}"
    try:
        results = {}

        def queued():
            results["queued"] = httpx.post(url + "/v1/completions", timeout=120, json={
                "model": MODEL, "prompt": "import ", "max_tokens": 5, "temperature": 0}).json()

        lines, t = [], threading.Thread(target=queued)
        with httpx.stream("POST", url + "/v1/completions", timeout=120, json={
                "model": MODEL, "prompt": "def ", "max_tokens": 40, "temperature": 0, "stream": True}) as r:
            it = (ln for ln in r.iter_lines() if ln.startswith("data:"))
            lines.append(next(it))                     # decoding now
            t.start()
            end = time.monotonic() + 60
            while httpx.get(url + "/health").json()["queue_depth"] != 1:
                assert time.monotonic() < end, "the second request never queued"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            lines += list(it)
        t.join(timeout=120)
        assert proc.wait(timeout=120) == 0
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert sum(len(c["choices"][0]["token_ids"]) for c in chunks) == 40
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(results["queued"]["choices"][0]["token_ids"]) == 5
    assert "stopped (requests in flight were finished)" in stderr and "Traceback" not in stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
