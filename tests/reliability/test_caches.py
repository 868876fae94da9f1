"""Caches are keyed on every input they depend on (issue 22, item 8): the cached integer export of a
checkpoint follows its tokenizer.json, so `--backend int` and `--backend float` always use one tokenizer."""

from __future__ import annotations

import shutil

from mmfree.pymodel.checkpoint import default_model_dir
from mmfree.pymodel.intmodel import export_cache_key, open_int_model
from mmfree.pymodel.tokenizer import load_tokenizer


def test_int_export_cache_follows_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFREE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m"
    shutil.copytree(default_model_dir(), src)
    k0 = export_cache_key(src)
    _, tok_dir = open_int_model(str(src))
    before = load_tokenizer(src).encode("def f")
    assert load_tokenizer(tok_dir).encode("def f") == before
    # a different tokenizer (a small BPE trained here): other ids for the same text
    from mmfree.pymodel.tokenizer import train_bpe

    train_bpe(["the cat sees the moon. " * 50], 300).save(src / "tokenizer.json")
    k1 = export_cache_key(src)
    assert k1 != k0
    _, tok_dir = open_int_model(str(src))
    assert (tmp_path / "cache" / "exports" / k1).is_dir()
    assert load_tokenizer(tok_dir).encode("def f") == load_tokenizer(src).encode("def f") != before
    (src / "tokenizer.json").unlink()                  # no tokenizer at all is another input state
    assert export_cache_key(src) not in (k0, k1)
    for f in ("config.json", "model.safetensors"):     # and every other file the export reads
        before = export_cache_key(src)
        with open(src / f, "ab") as fh:
            fh.write(b" ")
        assert export_cache_key(src) != before
