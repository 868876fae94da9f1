"""Tokenizers from checkpoint folders (``tokenizer.json``, the `tokenizers` library), and BPE training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mmfree import MmfreeError


class Tokenizer:
    """Thin wrapper: ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``."""

    def __init__(self, tok, path: Path | None = None):
        self._tok = tok
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

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
        return Tokenizer(HFTokenizer.from_file(str(f)), f)
    except Exception as exc:
        raise MmfreeError(f"{f} is not a valid tokenizers JSON file: {exc}") from exc


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
