"""`mmfree serve` on the float model and on the accelerator (the simulated board: the driver on the ISA emulator):
greedy and seeded completions equal `mmfree generate` (the board's equal the integer reference's, with the draft
tree cut to the build's tokens per pass)."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.helpers import generate_cli, live

MODEL = "mmfree-default"
SAMPLED = {"temperature": 0.8, "top_p": 0.95, "seed": 5}
SAMPLED_FLAGS = ["--temperature", "0.8", "--top-p", "0.95", "--seed", "5"]


def _ids(res) -> list[int]:
    return res.choices[0].model_extra["token_ids"]


@pytest.mark.parametrize("draft", ["auto", "none"])
def test_board_sim_equals_the_integer_reference(draft):
    from mmfree.serve.engine import open_backend

    backend = open_backend("board", board="sim", draft=draft)
    with live(backend) as (server, _):
        client = server.client()
        greedy = client.completions.create(model=MODEL, prompt="def ", max_tokens=8, temperature=0)
        sampled = client.completions.create(model=MODEL, prompt="def ", max_tokens=8, **SAMPLED)
        streamed = [t for ch in client.completions.create(model=MODEL, prompt="def ", max_tokens=8, stream=True,
                                                          **SAMPLED) for t in ch.choices[0].model_extra["token_ids"]]
        health = httpx.get(server.url + "/health").json()
    k = health["tokens_per_pass"]
    assert health["backend"] == "board" and health["board"] == "sim" and health["streams"] == 1
    args = ["--backend", "int", "--prompt", "def ", "--max-new-tokens", "8", "--stop-at-eos"]
    if draft == "auto":
        assert health["draft"] == "trigram" and health["max_draft"] == health["draft_nodes"] == k - 1
        args += ["--draft", "trigram", "--max-draft", str(k - 1), "--draft-nodes", str(k - 1)]
        assert greedy.model_extra["mmfree"]["decode_passes"] < 7        # drafts were accepted on the board
    else:
        assert health["draft"] == "none" and greedy.model_extra["mmfree"]["decode_passes"] == 7
    assert _ids(greedy) == generate_cli(*args)["tokens"]
    assert _ids(sampled) == streamed == generate_cli(*args, *SAMPLED_FLAGS)["tokens"]


def test_float_equals_generate():
    from mmfree.serve.engine import open_backend

    backend = open_backend("float")
    with live(backend) as (server, _):
        client = server.client()
        greedy = client.completions.create(model=MODEL, prompt="def ", max_tokens=6, temperature=0)
        sampled = client.completions.create(model=MODEL, prompt="def ", max_tokens=6, **SAMPLED)
        health = httpx.get(server.url + "/health").json()
    args = ["--backend", "float", "--prompt", "def ", "--max-new-tokens", "6", "--stop-at-eos"]
    assert health["backend"] == "float" and health["draft"] == "none"
    assert _ids(greedy) == generate_cli(*args)["tokens"]
    assert _ids(sampled) == generate_cli(*args, *SAMPLED_FLAGS)["tokens"]
    assert greedy.model_extra["mmfree"] == dict(greedy.model_extra["mmfree"], prefill_passes=1, decode_passes=5,
                                                accepted_drafts=0)


def test_int_backend_tree_rule():
    """--tree-rule on the int backend: the rule is reported and used (greedy tokens as `mmfree generate --draft
    trigram --tree-rule count-guided`); refused without trigram drafts or with an unknown name."""
    from mmfree import MmfreeError
    from mmfree.pymodel import trigram as TG
    from mmfree.serve.engine import Sampling, open_backend

    backend = open_backend("int", tree_rule="count-guided", draft_nodes=3)
    assert backend.describe()["tree_rule"] == "count-guided"
    assert open_backend("int").describe()["tree_rule"] == TG.DEFAULT_TREE_RULE
    ids = backend.tokenizer.encode("def ")
    got: list[int] = []
    backend.decode(ids, Sampling(max_tokens=8, temperature=0.0), got.append, [0, 0])
    args = ["--backend", "int", "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", "8", "--draft", "trigram",
            "--tree-rule", "count-guided", "--draft-nodes", "3"]
    ref = generate_cli(*args)
    assert got == ref["tokens"] and ref["tree_rule"] == "count-guided"
    for kw in (dict(backend="float"), dict(backend="int", draft="none")):
        with pytest.raises(MmfreeError, match="--tree-rule chooses the shape of trigram draft trees"):
            open_backend(tree_rule="template", **kw)
    with pytest.raises(MmfreeError, match="tree_rule must be one of"):
        open_backend("int", tree_rule="widest")
