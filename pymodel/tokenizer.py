"""Tokenizers from checkpoint folders (``tokenizer.json``, the `tokenizers` library), and BPE training.

Prompts get the special tokens the checkpoint's tokenizer config asks for, as
``transformers.AutoTokenizer.from_pretrained(DIR)(text)`` adds them: when ``tokenizer_config.json`` names a
Llama tokenizer class (the official MMfreeLM checkpoints), BOS is added if ``add_bos_token`` (default
true) and EOS if ``add_eos_token`` (default false), the tokens taken from ``bos_token``/``eos_token`` there
or in ``special_tokens_map.json``; any other folder uses the post-processor of its ``tokenizer.json``
(the embedded default model has none: no BOS). Corpus text (``encode``) never gets special tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mmfree import MmfreeError

#: tokenizer classes whose transformers implementation rebuilds the post-processor from add_bos/add_eos_token
_LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")


class Tokenizer:
    """Thin wrapper: ``encode(text) -> list[int]``, ``encode_prompt(text)``, ``decode(ids) -> str``, ``vocab_size``."""

    def __init__(self, tok, path: Path | None = None):
        self._tok = tok
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """``text`` with the special tokens the checkpoint's tokenizer config adds (BOS for the official
        checkpoints), i.e. what ``AutoTokenizer.from_pretrained(DIR)(text).input_ids`` gives."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(int(i) for i in ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def save(self, path: str | os.PathLike) -> None:
        from mmfree.atomic import write_text

        write_text(path, self._tok.to_str())


def load_tokenizer(path: str | os.PathLike = "default") -> Tokenizer:
    """Tokenizer of a checkpoint directory (its ``tokenizer.json``), a ``tokenizer.json`` file, or ``"default"``."""
    from tokenizers import Tokenizer as HFTokenizer

    from mmfree.pymodel.checkpoint import resolve

    p = Path(path)
    if str(path) != "default" and p.is_file():
        f = p
    else:
        f = resolve(path) / "tokenizer.json"
    if not f.exists():
        hint = ""
        if (f.parent / "tokenizer.model").exists():
            hint = (" (only a SentencePiece tokenizer.model is there; convert it once with "
                    "`transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`)")
        raise MmfreeError(f"no tokenizer.json in {f.parent}{hint}")
    try:
        tok = HFTokenizer.from_file(str(f))
    except Exception as exc:
        raise MmfreeError(f"{f} is not a valid tokenizers JSON file: {exc}") from exc
    _apply_tokenizer_config(tok, f.parent)
    return Tokenizer(tok, f)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmfreeError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(d, dict):
        raise MmfreeError(f"{path} must hold a JSON object, found {type(d).__name__}")
    return d


def _special_token(name: str, cfg: dict, smap: dict, folder: Path) -> str:
    """The text of special token ``name`` ("bos_token"): a string or ``{"content": ...}``."""
    v = cfg.get(name, smap.get(name))
    if isinstance(v, dict):
        v = v.get("content")
    if not isinstance(v, str):
        raise MmfreeError(f"{folder}/tokenizer_config.json asks for {name.split('_')[0].upper()} "
                          f"(add_{name}: true) but neither it nor special_tokens_map.json names {name}")
    return v


def _apply_tokenizer_config(tok, folder: Path) -> None:
    """Install the BOS/EOS template of a Llama-class ``tokenizer_config.json`` on ``tok`` (see module doc)."""
    from tokenizers import processors

    cfg = _read_json(folder / "tokenizer_config.json")
    if cfg.get("tokenizer_class") not in _LLAMA_CLASSES:
        return
    parts = {}
    for key, default in (("add_bos_token", True), ("add_eos_token", False)):
        flag = cfg.get(key, default)
        if not isinstance(flag, bool):
            raise MmfreeError(f"{folder}/tokenizer_config.json: {key} must be true or false, got {flag!r}")
        if flag:
            name = key[len("add_"):]
            text = _special_token(name, cfg, _read_json(folder / "special_tokens_map.json"), folder)
            tid = tok.token_to_id(text)
            if tid is None:
                raise MmfreeError(f"{folder}: {name} {text!r} is not in tokenizer.json's vocabulary")
            parts[name] = (text, tid)
    bos = f"{parts['bos_token'][0]}:0 " if "bos_token" in parts else ""
    eos = f" {parts['eos_token'][0]}:0" if "eos_token" in parts else ""
    tok.post_processor = processors.TemplateProcessing(single=f"{bos}$A:0{eos}", pair=f"{bos}$A:0{eos} $B:1",
                                                       special_tokens=list(parts.values()))


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens=("<unk>", "<s>", "</s>")) -> Tokenizer:
    """Train a byte-level BPE tokenizer. Special tokens get ids 0, 1, 2 (unk, bos, eos) as in LLaMA."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise MmfreeError(f"vocab size {vocab_size} is too small for a byte-level BPE (minimum {256 + len(special_tokens)})")
    tok = HFTokenizer(models.BPE(unk_token=special_tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)
