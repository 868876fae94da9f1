"""`mmfree serve` on the integer reference through the official OpenAI client, against a real uvicorn server on
loopback: completions equal `mmfree generate` token for token (greedy and seeded sampling, with and without
trigram drafts), streaming equals the plain response, 16 concurrent requests are all correct, and /v1/models,
/health and /metrics say what they should."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serve.helpers import generate_cli, live, metrics

MODEL = "mmfree-default"


def _ids(choice) -> list[int]:
    return choice.model_extra["token_ids"]


@pytest.mark.parametrize("kw,flags", [
    ({"temperature": 0}, []),
    ({"temperature": 0.8, "top_p": 0.9, "seed": 7}, ["--temperature", "0.8", "--top-p", "0.9", "--seed", "7"]),
], ids=["greedy", "sampled-seed7"])
def test_int_with_drafts_equals_generate(int_server, kw, flags):
    res = int_server.client().completions.create(model=MODEL, prompt="def ", max_tokens=12, **kw)
    ref = generate_cli("--backend", "int", "--draft", "trigram", "--prompt", "def ", "--max-new-tokens", "12",
                       "--stop-at-eos", *flags)
    c = res.choices[0]
    assert _ids(c) == ref["tokens"]
    assert c.text == ref["text"] and c.finish_reason == "length"
    assert res.usage.prompt_tokens == len(ref["prompt_ids"]) and res.usage.completion_tokens == 12
    assert res.model_extra["mmfree"]["backend"] == "int"


def test_int_plain_sampling_equals_generate_seed(int_plain_backend):
    with live(int_plain_backend) as (server, _):
        res = server.client().completions.create(model=MODEL, prompt="import ", max_tokens=10, temperature=1.0,
                                                 seed=123)
        greedy = server.client().completions.create(model=MODEL, prompt="import ", max_tokens=10, temperature=0)
        health = httpx.get(server.url + "/health").json()
    assert _ids(res.choices[0]) == generate_cli("--backend", "int", "--prompt", "import ", "--max-new-tokens", "10",
                                                "--temperature", "1", "--seed", "123", "--stop-at-eos")["tokens"]
    assert _ids(greedy.choices[0]) == generate_cli("--backend", "int", "--prompt", "import ", "--max-new-tokens",
                                                   "10", "--stop-at-eos")["tokens"]
    assert health["draft"] == "none"
    assert res.model_extra["mmfree"]["accepted_drafts"] == 0


def test_token_id_prompt_and_stream_equal_plain_response(int_server):
    client = int_server.client()
    plain = client.completions.create(model=MODEL, prompt=[1, 377, 918], max_tokens=9, temperature=0.7, seed=3)
    chunks = list(client.completions.create(model=MODEL, prompt=[1, 377, 918], max_tokens=9, temperature=0.7,
                                            seed=3, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    ids = [t for ch in chunks if ch.choices for t in ch.choices[0].model_extra["token_ids"]]
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert text == plain.choices[0].text and ids == _ids(plain.choices[0]) and len(ids) == 9
    assert finish[-1] == "length" and set(finish[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == 9 and chunks[-1].usage.prompt_tokens == 3


def test_stop_string_cuts_the_text(int_server):
    client = int_server.client()
    full = client.completions.create(model=MODEL, prompt="def ", max_tokens=12, temperature=0).choices[0]
    stop = full.text[3:6]                           # a piece of the greedy continuation
    cut = client.completions.create(model=MODEL, prompt="def ", max_tokens=12, temperature=0, stop=[stop, "@@"])
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt="def ", max_tokens=12, temperature=0, stop=stop, stream=True))
    c = cut.choices[0]
    assert c.finish_reason == "stop" and c.text == full.text[:full.text.index(stop)] == streamed
    assert _ids(c) == _ids(full)[:len(_ids(c))] and len(_ids(c)) < 12
    stats = cut.model_extra["mmfree"]                 # passes are counted when a stop string ends the decode too
    assert stats["prefill_passes"] == 1 and 1 <= stats["decode_passes"] <= len(_ids(c)) - 1
    assert stats["accepted_drafts"] == len(_ids(c)) - 1 - stats["decode_passes"]


def test_sixteen_concurrent_requests_all_correct(int_server, int_backend):
    """16 requests at once (greedy and seeded, different prompts) queue behind one decode loop; each answer is the
    integer reference's own, computed here without the server."""
    from mmfree.pymodel.speculative import speculative_generate

    prompts = ["def ", "import ", "class ", "for i in ", "return ", "if x", "# ", "print("]
    reqs = [dict(prompt=p, temperature=0.0, seed=0) for p in prompts] + \
           [dict(prompt=p, temperature=0.9, seed=i) for i, p in enumerate(prompts)]
    client = int_server.client().with_options(timeout=300)
    from openai import AsyncOpenAI

    async def run():
        ac = AsyncOpenAI(base_url=int_server.url + "/v1", api_key="none", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*[ac.completions.create(model=MODEL, max_tokens=6, **r) for r in reqs])
        finally:
            await ac.close()

    results = asyncio.run(run())
    assert client.models.list().data[0].id == MODEL
    tok = int_backend.tokenizer
    for r, res in zip(reqs, results):
        ref = speculative_generate(int_backend.model, tok.encode(r["prompt"]), 6, temperature=r["temperature"],
                                   seed=r["seed"], table=int_backend.table, model_dir=int_backend.tok_dir,
                                   eos_id=2, log=lambda m: None)
        assert _ids(res.choices[0]) == ref.tokens, r


def test_health_models_and_metrics(int_backend):
    with live(int_backend, max_queue=3, max_tokens=32) as (server, _):
        client = server.client()
        client.completions.create(model=MODEL, prompt="def ", max_tokens=8, temperature=0)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="def ", max_tokens=0)
        health = httpx.get(server.url + "/health").json()
        m = metrics(server.url)
        models = client.models.list()
    assert [x.id for x in models.data] == [MODEL]
    assert health["status"] == "ok" and health["backend"] == "int" and health["draft"] == "trigram"
    assert health["streams"] == 1 and "one stream at a time" in health["batching"]
    assert health["max_queue"] == 3 and health["max_tokens"] == 32 and health["queue_depth"] == 0
    assert m[("mmfree_requests_total", "length")] == 1 and m[("mmfree_requests_total", "invalid")] == 1
    assert m[("mmfree_completion_tokens_total",)] == 8 and m[("mmfree_prompt_tokens_total",)] == 2
    assert m[("mmfree_passes_total", "prefill")] == 1
    decode = m[("mmfree_passes_total", "decode")]
    assert 1 <= decode <= 7 and m[("mmfree_accepted_drafts_total",)] == 7 - decode
    assert m[("mmfree_tokens_per_second",)] > 0 and m[("mmfree_queue_depth",)] == 0
    assert m[("mmfree_request_seconds_count",)] == 1
