"""Text corpora and token streams for training and evaluation.

The embedded default model trains on text every Python install ships: the standard library's own
``.py`` sources (without ``test/`` and ``site-packages``) and ``pydoc_data.topics``. Validation holds
out whole top-level modules (about 10%, chosen by a CRC32 of the module name), so near-duplicate
code never straddles the split.
"""

from __future__ import annotations

import sysconfig
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfree import MmfreeError

VAL_BUCKETS = 10  # 1 in 10 top-level modules goes to validation


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def is_validation(name: str) -> bool:
    """Whether document ``name`` belongs to the held-out split. ``name`` is relative to its corpus root
    (``pkg/mod.py``, ``mod.py`` or ``pydoc_data:topic``); a whole top-level package goes one way."""
    top = name.lstrip("/").split("/")[0].split(":")[0].removesuffix(".py")
    return zlib.crc32(top.encode()) % VAL_BUCKETS == 0


def stdlib_documents() -> list[Document]:
    """The standard library's sources and pydoc topics, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] in ("test", "site-packages", "idlelib") or "tests" in rel.parts:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(Document(rel.as_posix(), text))
    try:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            docs.append(Document(f"pydoc_data:{key}", topics[key]))
    except ImportError:
        pass
    return docs


def file_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Text files (directories are searched for ``*.py``, ``*.txt``, ``*.md``)."""
    docs = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in (".py", ".txt", ".md") and f.is_file())
            root = p
        elif p.is_file():
            files = [p]
            root = p.parent
        else:
            raise MmfreeError(f"corpus path {p} does not exist")
        for f in files:
            try:
                # names relative to the corpus root, so the validation split keys on the module, not the path
                docs.append(Document(f.relative_to(root).as_posix(), f.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                raise MmfreeError(f"{f} is not UTF-8 text; pass text files only") from None
    if not docs:
        raise MmfreeError("the corpus is empty: no text files found in " + ", ".join(map(str, paths)))
    return docs


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    train = [d for d in docs if not is_validation(d.name)]
    val = [d for d in docs if is_validation(d.name)]
    if not val or not train:  # tiny corpora, or everything in one bucket: hold out the last document only
        train, val = docs[:-1] or docs, docs[-1:]
    return train, val


def tokenize(docs: list[Document], tokenizer, eos_id: int) -> np.ndarray:
    """Concatenate the documents' token ids, an ``eos_id`` after each; ``uint16`` or ``int32`` array."""
    ids: list[int] = []
    texts = [d.text for d in docs]
    for chunk in range(0, len(texts), 256):
        for enc in tokenizer.encode_batch(texts[chunk:chunk + 256]):
            ids.extend(enc)
            ids.append(eos_id)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.int32
    return np.asarray(ids, dtype=dtype)


def unigram_perplexity(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Perplexity on ``val`` of the add-one-smoothed unigram distribution of ``train`` (the baseline)."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[val[1:].astype(np.int64)].mean()))
