"""``mmfree serve``: the OpenAI-compatible server (see :mod:`mmfree.serve` and docs/serve.md).

Nothing heavy is imported at module level (FastAPI, uvicorn and the model load only when the command runs).
"""

from __future__ import annotations

import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand
from mmfree.serve.engine import Limits  # standard library only: `mmfree --help` stays instant

SERVE_MISSING = "the server needs FastAPI and uvicorn: pip install -e '.[serve]'"


def register(sub) -> None:
    """Add ``mmfree serve`` to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "serve", _serve, "serve a model over an OpenAI-compatible HTTP API (float, int or the accelerator)",
        "Loads --model on --backend and serves it with FastAPI + uvicorn:\n"
        "  POST /v1/completions  prompt (text or token ids), max_tokens, temperature (default 1; 0 = greedy),\n"
        "                        top_p, seed (default 0), stop, stream (Server-Sent Events); the OpenAI client\n"
        "                        works with base_url http://HOST:PORT/v1. Each choice also carries token_ids.\n"
        "  GET  /v1/models, /health (backend, queue, limits), /metrics (Prometheus text format)\n"
        "Completions equal `mmfree generate` on the same backend token for token (greedy, or sampled with the\n"
        "same seed and draft settings; generation stops after the end-of-sequence token).\n\n"
        "Backends: float (PyTorch), int (the bit-exact integer reference), board (the accelerator through its\n"
        "driver: --board sim is the simulated board (the ISA emulator, bit-exact with the reference); a PYNQ board\n"
        "name with --bitstream X.bit runs on hardware). Trigram drafts are on for int and board (--draft none\n"
        "turns them off; on a board the draft tree is cut to the build's tokens per pass).\n\n"
        "Requests wait in one queue (at most --max-queue; beyond it HTTP 429 with Retry-After) for ONE decode\n"
        "loop: one stream at a time by default; --max-streams N (--backend board) decodes up to N requests\n"
        "together, every weight pass shared (a request joins at the next pass, leaves when done; /health says\n"
        "streams: N), each request's tokens those of decoding it alone (--draft none; sampled with its own seed).\n"
        "Limits:\n"
        "--max-tokens per request, --max-prompt-tokens, --request-timeout from arrival to the last token\n"
        "(HTTP 504, or an error event in a stream). A bad field gets HTTP 400 naming it; a client that\n"
        "disconnects cancels its request; SIGTERM (or Ctrl-C) stops accepting connections, finishes the\n"
        "requests in flight and exits 0. --port 0 picks a free port; the first line printed says which.",
    )
    p.add_argument("--model", default="default",
                   help="'default' (the embedded model), a checkpoint directory, or an `mmfree export` directory "
                        "(int, board)")
    p.add_argument("--backend", choices=["float", "int", "board"], default="int",
                   help="float: PyTorch model; int: bit-exact integer reference; board: the accelerator (--board)")
    p.add_argument("--board", default=None,
                   help="with --backend board: 'sim' (simulated board: ISA emulator) or pynq-z2, kv260, zcu104, "
                        "custom:PATH.json (needs --bitstream)")
    p.add_argument("--bitstream", default=None, help="--backend board on a PYNQ board: X.bit with X.hwh beside it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    p.add_argument("--max-streams", type=int, default=1, metavar="N",
                   help="requests decoded together, sharing every weight pass (continuous batching at pass "
                        "boundaries): 1 (default, one stream at a time) up to the accelerator's tokens per pass; "
                        "N > 1 needs --backend board and runs without draft trees")
    p.add_argument("--draft", choices=["auto", "trigram", "none"], default="auto",
                   help="speculative decoding with the trigram drafter; auto: on for int and board, off for float")
    p.add_argument("--max-draft", type=int, default=4, help="draft tree depth (as `mmfree generate --max-draft`)")
    p.add_argument("--draft-nodes", type=int, default=None,
                   help="draft tree size (as `mmfree generate --draft-nodes`; default: the drafter's)")
    p.add_argument("--tree-rule", choices=["count-guided", "template"], default=None,   # trigram.TREE_RULES
                   help="draft tree shape (as `mmfree generate --tree-rule`; default: docs/speculative.md)")
    p.add_argument("--trigram-table", default=None, help="trigram table file (default: the model's own)")
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens, help="most completion tokens one request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens,
                   help="most prompt tokens one request may send")
    p.add_argument("--max-queue", type=int, default=Limits.max_queue, help="most requests waiting behind the running one")
    p.add_argument("--request-timeout", type=float, default=Limits.request_timeout_s,
                   help="seconds from a request's arrival to its last token (queue wait included)")
    p.add_argument("--pass-timeout", type=float, default=60.0, help="board: seconds one accelerator pass may take")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: mmfree-default, or the model directory's name)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="warning",
                   help="uvicorn's log level (info logs every request)")


def _check_args(args) -> None:
    from mmfree.serve.engine import check_max_streams

    check_max_streams(args.max_streams, args.backend, args.draft, args.trigram_table, args.tree_rule,
                      args.draft_nodes)
    if not 0 <= args.port <= 65535:
        raise MmfreeError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if not args.pass_timeout > 0:
        raise MmfreeError(f"--pass-timeout must be > 0, got {args.pass_timeout}")
    if args.bitstream is not None and args.backend != "board":
        raise MmfreeError("--bitstream goes with --backend board")
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise MmfreeError("--served-model-name must not be empty")


def _listen(host: str, port: int):
    """A listening TCP socket on (host, port); MmfreeError naming the flag when it cannot be opened."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MmfreeError(f"--host {host!r} is not an address this machine can listen on ({exc})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MmfreeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          "(0 picks a free one) or --host") from None
    return sock


def _serve(args) -> int:
    import signal

    _check_args(args)
    limits = Limits(args.max_tokens, args.max_prompt_tokens, args.max_queue, args.request_timeout)
    limits.check()
    try:
        import uvicorn

        from mmfree.serve.app import GRACE_S, create_app
    except ImportError:
        raise MmfreeError(SERVE_MISSING) from None
    from mmfree.serve.engine import Engine, open_backend
    from mmfree.serve.metrics import Metrics

    backend = open_backend(args.backend, args.model, args.board, args.draft, args.max_draft, args.draft_nodes,
                           args.trigram_table, args.bitstream, args.served_model_name, args.pass_timeout,
                           tree_rule=args.tree_rule, max_streams=args.max_streams)
    metrics = Metrics()
    engine = Engine(backend, limits, metrics)
    drain = limits.request_timeout_s + GRACE_S
    try:
        sock = _listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(create_app(engine, metrics, drain), log_level=args.log_level,
                                               timeout_graceful_shutdown=drain, lifespan="on"))
        d = backend.describe()
        print(f"mmfree serve: {backend.model_id} on backend {d['backend']}"
              + (f" ({d['board']})" if "board" in d else "") + f", drafts {d['draft']}, "
              + ("one stream at a time" if engine.streams == 1 else f"up to {engine.streams} streams per pass") + "; "
              f"listening on http://{host}:{port} (OpenAI API at /v1)", flush=True)
        # uvicorn re-raises the signal it stopped on once it has drained: a no-op SIGTERM handler makes that an
        # ordinary return, so a drained shutdown exits 0.
        previous = signal.signal(signal.SIGTERM, lambda *a: None)
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
            sock.close()
    finally:
        stopped = engine.close(timeout_s=0)
        if stopped:
            backend.close()
    if not stopped:
        # closing the accelerator under a pass that is still running would pull its buffers away mid-pass
        raise MmfreeError(f"the decode thread did not stop within the pass time-out ({args.pass_timeout:g} s + 5 s); "
                          "the accelerator was left open (the process exit releases it)")
    print("mmfree serve: stopped (requests in flight were finished)", file=sys.stderr, flush=True)
    return 0
