"""Prompts get BOS the way transformers.AutoTokenizer adds it, per the checkpoint's tokenizer config (issue 18)."""

import json

import pytest

from mmfree import MmfreeError
from mmfree.cli import main
from mmfree.pymodel.tokenizer import load_tokenizer, train_bpe

from .helpers import random_checkpoint

TEXT = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(100))
PROMPTS = ["def f3(x):", "return x + 7", " a"]


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    """A random checkpoint with a BPE whose ids 0/1/2 are <unk>/<s>/</s> and a Llama-style tokenizer config."""
    root = tmp_path_factory.mktemp("bos")
    tok = train_bpe([TEXT], 300)
    ck = random_checkpoint(root / "ck", vocab_size=300)
    tok.save(ck / "tokenizer.json")
    (ck / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": "</s>", "unk_token": "<unk>", "legacy": True, "clean_up_tokenization_spaces": False}))
    (ck / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return ck


def _set_config(ck, **changes):
    cfg = json.loads((ck / "tokenizer_config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (ck / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("variant", ["bos", "bos-default", "no-bos", "bos-and-eos", "bos-from-map", "not-llama"])
def test_prompt_ids_match_transformers(tmp_path, llama_ckpt, variant):
    transformers = pytest.importorskip("transformers")
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(llama_ckpt, ck)
    changes = {"bos": {}, "bos-default": {"add_bos_token": None}, "no-bos": {"add_bos_token": False},
               "bos-and-eos": {"add_eos_token": True}, "bos-from-map": {"bos_token": None},
               "not-llama": {"tokenizer_class": "PreTrainedTokenizerFast"}}[variant]
    _set_config(ck, **changes)
    ours = load_tokenizer(ck)
    theirs = transformers.AutoTokenizer.from_pretrained(str(ck))
    for p in PROMPTS:
        assert ours.encode_prompt(p) == theirs(p)["input_ids"], (variant, p)
        assert ours.encode(p) == theirs(p, add_special_tokens=False)["input_ids"]   # corpus text: never BOS
    assert (ours.encode_prompt("a")[0] == 1) == (variant in ("bos", "bos-default", "bos-and-eos", "bos-from-map"))


def test_generate_json_shows_bos(llama_ckpt, capsys):
    assert main(["generate", "--model", str(llama_ckpt), "--prompt", "def f3(x):", "--max-new-tokens", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == load_tokenizer(llama_ckpt).encode_prompt("def f3(x):")
    assert out["prompt_ids"][0] == 1 and out["prompt_ids"][1:] == load_tokenizer(llama_ckpt).encode("def f3(x):")


def test_int_backend_and_export_keep_bos(tmp_path, llama_ckpt, capsys):
    assert main(["export", "--model", str(llama_ckpt), "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "tokenizer_config.json").exists()
    capsys.readouterr()
    for model in (str(llama_ckpt), str(tmp_path / "img")):
        assert main(["generate", "--model", model, "--backend", "int", "--prompt", "def", "--max-new-tokens", "1",
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["prompt_ids"][0] == 1


def test_default_model_gets_no_bos():
    tok = load_tokenizer("default")
    assert tok.encode_prompt("def ") == tok.encode("def ")


@pytest.mark.parametrize("bad,msg", [({"add_bos_token": "yes"}, "add_bos_token must be true or false"),
                                     ({"bos_token": "<nope>"}, "not in tokenizer.json's vocabulary")])
def test_bad_tokenizer_config(tmp_path, llama_ckpt, capsys, bad, msg):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(llama_ckpt, ck)
    _set_config(ck, **bad)
    with pytest.raises(MmfreeError, match=msg):
        load_tokenizer(ck)
    assert main(["generate", "--model", str(ck), "--prompt", "def", "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmfree generate: error: ") and "Traceback" not in err


def test_tokenizer_config_not_json(tmp_path, llama_ckpt):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(llama_ckpt, ck)
    (ck / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(MmfreeError, match="tokenizer_config.json is not valid JSON"):
        load_tokenizer(ck)


def test_board_run_json_shows_bos(llama_ckpt, capsys):
    """`mmfree run` (the host session's prompt encoding, as `mmfree sim` and `mmfree demo`) adds BOS like generate."""
    pytest.importorskip("pynq")
    assert main(["run", "--board", "pynq-sim", "--model", str(llama_ckpt), "--prompt", "def f3(x):", "--tokens", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(llama_ckpt)
    assert out["prompt_ids"] == tok.encode_prompt("def f3(x):") and out["prompt_ids"][0] == 1
    assert out["prompt_ids"][1:] == tok.encode("def f3(x):")
