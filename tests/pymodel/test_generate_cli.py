"""`mmfree generate`: text streams to the terminal; damaged checkpoints give one clear error (issue 18)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmfree.cli import main
from mmfree.pymodel.tokenizer import load_tokenizer

from .helpers import random_checkpoint


def test_text_streams_token_by_token():
    """The first generated text reaches stdout before generation ends (read from a pipe, unbuffered)."""
    code = ("import sys, time\n"
            "import mmfree.pymodel.generate as G\n"
            "orig = G.generate\n"
            "def slow(backend, ids, n, *a, progress=None, **k):\n"
            "    def p(t):\n"
            "        progress(t); sys.stderr.write('TOKEN\\n'); sys.stderr.flush(); time.sleep(0.3)\n"
            "    return orig(backend, ids, n, *a, progress=p, **k)\n"
            "G.generate = slow\n"
            "from mmfree.cli import main\n"
            "sys.exit(main(['generate', '--prompt', 'def ', '--max-new-tokens', '6']))\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = p.stdout.read(4)                        # "def " (the prompt), then the first token's text
    more = p.stdout.read1(100)
    still_running = p.poll() is None                # 5 more tokens, 0.3 s each, are still to come
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    assert first == b"def " and more and still_running
    whole = first + more + out
    tok = load_tokenizer("default")
    gen = json.loads(subprocess.run([sys.executable, "-m", "mmfree", "generate", "--prompt", "def ",
                                     "--max-new-tokens", "6", "--json"], capture_output=True, text=True,
                                    check=True).stdout)
    assert whole.decode() == "def " + tok.decode(gen["tokens"]) + "\n"
    assert err.decode().count("TOKEN") == 6


def _generate_error(capsys, model, backend):
    rc = main(["generate", "--model", str(model), "--backend", backend, "--prompt-ids", "1,2", "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("mmfree generate: error: ") and "Traceback" not in err
    return err


def _rewrite(ck, fn):
    sd = load_file(str(ck / "model.safetensors"))
    fn(sd)
    save_file(sd, str(ck / "model.safetensors"))


@pytest.mark.parametrize("backend", ["float", "int"])
@pytest.mark.parametrize("damage,msg", [
    ("missing", "missing model.layers.1.attn.f_proj.weight"),
    ("shape", "model.layers.0.mlp.down_proj.weight: expected shape [60, 84], found [60, 83]"),
    ("nan", "model.layers.1.attn.o_proj.weight"),
    ("inf", "lm_head.weight"),
    ("truncated", "truncated"),
    ("int-tensor", "model.norm.weight: expected a float tensor"),
])
def test_damaged_checkpoint_one_clear_error(tmp_path, capsys, backend, damage, msg):
    ck = random_checkpoint(tmp_path / "ck", seed=2)
    if damage == "missing":
        _rewrite(ck, lambda sd: sd.pop("model.layers.1.attn.f_proj.weight"))
    elif damage == "shape":
        _rewrite(ck, lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.weight",
                                               sd["model.layers.0.mlp.down_proj.weight"][:, :83].contiguous()))
    elif damage == "nan":
        _rewrite(ck, lambda sd: sd["model.layers.1.attn.o_proj.weight"].view(-1).__setitem__(7, float("nan")))
    elif damage == "inf":
        _rewrite(ck, lambda sd: sd["lm_head.weight"].view(-1).__setitem__(3, float("inf")))
    elif damage == "truncated":
        raw = (ck / "model.safetensors").read_bytes()
        (ck / "model.safetensors").write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "int-tensor":
        _rewrite(ck, lambda sd: sd.__setitem__("model.norm.weight", torch.ones(60, dtype=torch.int32)))
    err = _generate_error(capsys, ck, backend)
    assert msg in err
    if damage in ("nan", "inf"):
        assert "NaN or inf" in err


@pytest.mark.parametrize("backend", ["float", "int"])
def test_header_only_file_is_an_error(tmp_path, capsys, backend):
    ck = random_checkpoint(tmp_path / "ck", seed=2)
    (ck / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    assert "model.safetensors" in _generate_error(capsys, ck, backend)
