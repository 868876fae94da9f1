"""Pre-tokenised training data: ``mmfree data prepare`` writes it, ``mmfree train --data`` reads it.

Layout of a data directory::

    DIR/train.bin, DIR/val.bin   token ids, one flat little-endian array each (uint16 when the vocabulary
                                 has <= 65536 ids, else uint32), an EOS id after every document
    DIR/tokenizer.json           the tokenizer the ids come from (``tokenizer_sha256`` is its sha256)
    DIR/meta.json                dtype, vocab_size, eos_id, documents / tokens per split, the split rule

Documents. Each corpus file is split into documents at blank lines (one or more empty or
whitespace-only lines end a document), so a single file still gives a held-out split; a Hugging Face
dataset gives one document per row (its ``text`` column). Identical documents are merged first (by the
sha256 of their text), so "the same document" can never land in both splits.

Split. The distinct documents are permuted with ``numpy.random.default_rng(seed)`` and the first
``max(1, round(val_fraction * n))`` go to validation (never all of them): a seeded hold-out by document.

Sampling (:func:`window_starts`). The training stream is cut into ``W = (tokens - 1) // seq_len``
non-overlapping windows of ``seq_len + 1`` tokens (input + shifted target share one token). An epoch is
``E = (W // B) * B`` steps' worth of windows: the first ``E`` of its own seeded permutation of all ``W``
(the ``W - E < B`` left over differ from epoch to epoch, so no window is dropped for good). Step ``s``
takes positions ``(s * B) % E ..`` of epoch ``s * B // E`` (a step never straddles two epochs), and
rank ``r`` of ``R`` takes its own contiguous ``B / R`` of them. So the ranks' windows are disjoint, no
window repeats within an epoch, and the windows of a step are a pure function of (seed, step): a
resumed run sees exactly the windows of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfree import MmfreeError

META = "meta.json"
SPLIT_RULE = "documents: blank-line-separated blocks of each file (one per row for --hf-dataset); " \
             "identical documents merged; seeded permutation, first round(val_fraction*n) to val"
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n(?:[ \t\r\f\v]*\n)*")


def split_blocks(text: str) -> list[str]:
    """A file's documents: its blank-line-separated blocks, without the blank lines (empty blocks dropped)."""
    return [b for b in (blk.strip("\n") for blk in _BLANK.split(text)) if b.strip()]


def file_documents(paths: list[str]) -> list[str]:
    """The documents of text files (directories: their ``*.py``, ``*.txt``, ``*.md``), in a stable order."""
    from mmfree.pymodel import data as D

    return [blk for doc in D.file_documents(paths) for blk in split_blocks(doc.text)]


def hf_documents(spec: str) -> list[str]:
    """One document per row of a Hugging Face dataset ``NAME[:SPLIT]`` (default split ``train``), read with
    ``datasets.load_dataset`` (offline with ``HF_DATASETS_OFFLINE=1``: local files or the local cache)."""
    name, _, split = spec.partition(":")
    if not name:
        raise MmfreeError(f"--hf-dataset {spec!r}: expected NAME[:SPLIT], e.g. wikitext:train")
    try:
        import datasets
    except ImportError:
        raise MmfreeError("--hf-dataset needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:       # datasets raises FileNotFoundError, ValueError, ConnectionError, ...
        raise MmfreeError(f"--hf-dataset {spec!r} could not be loaded ({type(exc).__name__}: {str(exc)[:300]}); "
                          "pass a dataset in the local Hugging Face cache or a local data directory") from None
    if "text" not in ds.column_names:
        raise MmfreeError(f"--hf-dataset {spec!r} has no 'text' column (columns: {ds.column_names})")
    return [t for t in ds["text"] if isinstance(t, str) and t.strip()]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) documents: distinct texts, a seeded hold-out of ``val_fraction`` of them (at least one each)."""
    distinct = list(dict.fromkeys(docs))
    if len(distinct) < 2:
        raise MmfreeError(f"the corpus has {len(distinct)} distinct document(s); a train/val split needs at "
                          "least 2 (documents are blank-line-separated blocks): add text")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_val = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    val_idx = set(order[:n_val].tolist())
    train = [d for i, d in enumerate(distinct) if i not in val_idx]
    val = [d for i, d in enumerate(distinct) if i in val_idx]
    return train, val


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_tokens(path: Path, docs: list[str], tok, eos: int, dtype) -> int:
    """Append each document's ids and ``eos`` to ``path`` in chunks; returns the token count."""
    n = 0
    with open(path, "wb") as fh:
        for i in range(0, len(docs), 256):
            for ids in tok.encode_batch(docs[i:i + 256]):
                arr = np.asarray([*ids, eos], dtype=dtype)
                fh.write(arr.tobytes())
                n += len(arr)
    return n


def prepare(out: str, tokenizer: str, corpus: list[str] | None = None, hf_dataset: str | None = None,
            val_fraction: float = 0.1, seed: int = 0, force: bool = False) -> dict:
    """Tokenise a corpus into ``out`` (layout in the module docstring) atomically; returns ``meta.json``'s
    summary (``train_documents``, ``val_documents``, ``train_tokens``, ``val_tokens``, ``overlap_documents``...).

    Exactly one of ``corpus`` (files/dirs) and ``hf_dataset`` (``NAME[:SPLIT]``). ``val_fraction`` in (0, 1).
    Bad input raises :class:`MmfreeError` naming the flag."""
    from mmfree.atomic import check_output_dir, output_dir
    from mmfree.pymodel.tokenizer import load_tokenizer

    if bool(corpus) == bool(hf_dataset):
        raise MmfreeError("pass exactly one of --corpus FILES and --hf-dataset NAME[:SPLIT]")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise MmfreeError(f"--val-fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MmfreeError(f"--seed must be an integer >= 0, got {seed!r}")
    dest = check_output_dir(out, "data", inputs=[tokenizer, *(corpus or [])], force=force)
    tok = load_tokenizer(tokenizer)
    docs = file_documents(corpus) if corpus else hf_documents(hf_dataset)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    eos = tok.token_id("</s>")
    eos = 2 if eos is None else eos
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    tok_json = tok._tok.to_str()
    overlap = len({_sha(d) for d in train_docs} & {_sha(d) for d in val_docs})
    with output_dir(dest, "data") as tmp:
        (tmp / "tokenizer.json").write_text(tok_json)
        meta = {"format": 1, "dtype": np.dtype(dtype).name, "vocab_size": tok.vocab_size, "eos_id": eos,
                "tokenizer_sha256": _sha(tok_json), "tokenizer_source": str(tokenizer),
                "source": {"corpus": list(corpus or []), "hf_dataset": hf_dataset},
                "val_fraction": val_fraction, "seed": seed, "split_rule": SPLIT_RULE,
                "documents": len(train_docs) + len(val_docs),
                "train_documents": len(train_docs), "val_documents": len(val_docs),
                "train_tokens": _write_tokens(tmp / "train.bin", train_docs, tok, eos, dtype),
                "val_tokens": _write_tokens(tmp / "val.bin", val_docs, tok, eos, dtype),
                "overlap_documents": overlap}
        meta["tokens"] = meta["train_tokens"] + meta["val_tokens"]
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


@dataclass
class Shards:
    """A prepared data directory, memory-mapped (nothing is read until a window is sliced)."""

    path: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray


def open_shards(path: str) -> Shards:
    """Open ``mmfree data prepare``'s output; MmfreeError (naming ``--data``) when it is missing or inconsistent."""
    p = Path(path)
    try:
        meta = json.loads((p / META).read_text())
        dtype = np.dtype(meta["dtype"])
        arrays = [np.memmap(p / f"{s}.bin", dtype=dtype, mode="r") if meta[f"{s}_tokens"] else np.zeros(0, dtype)
                  for s in ("train", "val")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MmfreeError(f"--data {path}: not a directory written by `mmfree data prepare` ({type(exc).__name__}: "
                          f"{exc}); run `mmfree data prepare --out {path} ...` first") from None
    for s, a in zip(("train", "val"), arrays):
        if len(a) != meta[f"{s}_tokens"]:
            raise MmfreeError(f"--data {path}: {s}.bin holds {len(a)} tokens, meta.json says {meta[f'{s}_tokens']}; "
                              "prepare the data again")
    return Shards(p, meta, arrays[0], arrays[1])


_PERM_CACHE: dict = {}


def _epoch_perm(seed: int, epoch: int, n_windows: int) -> np.ndarray:
    key = (seed, epoch, n_windows)
    if key not in _PERM_CACHE:
        _PERM_CACHE.clear()                       # one or two epochs live at a time
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n_windows)
    return _PERM_CACHE[key]


def window_starts(n_tokens: int, seq_len: int, step: int, batch: int, rank: int, world: int, seed: int) -> np.ndarray:
    """Start offsets of rank ``rank``'s ``batch // world`` windows at ``step`` (see the module docstring)."""
    n_windows = (n_tokens - 1) // seq_len
    if n_windows < batch:
        raise MmfreeError(f"the training split has {n_windows} windows of {seq_len + 1} tokens, fewer than one "
                          f"batch ({batch}); lower --batch-size/--seq-len or add data")
    per = batch // world
    epoch_len = n_windows // batch * batch
    epoch, pos = divmod(step * batch, epoch_len)
    return _epoch_perm(seed, epoch, n_windows)[pos + rank * per:pos + (rank + 1) * per].astype(np.int64) * seq_len


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int):
    """``[len(starts), seq_len + 1]`` int64 tensor of the windows at ``starts``."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts]))
