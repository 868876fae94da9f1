"""The trigram drafter: an adaptive table of token trigrams that proposes draft trees (no draft network).

After ADED ("Adaptive Draft-Verification for Efficient LLM Decoding"): a table keyed by the last two
tokens holds their most frequent successors, built offline from a corpus tokenized with the target
model's tokenizer and updated online with the tokens the model itself commits. Unlike ADED (float
probabilities, MCTS) everything here is integer and every choice is deterministic, so an RTL draft
engine can reproduce the drafts bit for bit. docs/speculative.md is the normative description; this
module is its reference implementation.

Storage (all little-endian ``uint32`` words)
--------------------------------------------
*Trigram table* ``trig[2**S][W][1 + K]`` (DDR): ``2**S`` sets of ``W`` ways; one way is one context
``(a, b)`` = one 64-byte line for the default ``K = 15``::

    word 0        key  = a << 16 | b          (EMPTY_KEY = 0xFFFFFFFF marks an unused way)
    word 1 + i    slot = token << 16 | count  (count 0 = empty; 1..cmax = weight)

*Bigram fallback* ``bigram[V][KB]`` (on chip): row ``b`` holds the successors of token ``b`` in slots
of the same format, indexed directly by the token (no hash).

The occupied slots of a row are always a prefix, sorted by count, highest first; among equal counts
the slot that reached the count first stays first. Slot order *is* the successor rank.

Hash: ``set(a, b) = ((a << 16 | b) * HASH_MULT mod 2**32) >> (32 - S)`` with ``HASH_MULT =
0x9E3779B1`` (Fibonacci hashing: one 32x32 multiply, keep the top ``S`` bits of the low word).

Offline build (software only): every trigram of the token stream is counted; per context the top
``K`` successors by count (ties: lower token id) are kept with weight
``clamp((count * one + total // 2) // total, 1, cmax)`` (``total`` = all occurrences of the context);
per set the ``W`` contexts with the highest totals are kept (ties: lower key), way 0 the most frequent.
The bigram fallback is built the same way from bigram counts (top ``KB`` per row).

Online update ``update(a, b, c)`` for each committed token ``c`` after ``a, b`` (prompt tokens too):

1. trigram: find the way whose key is ``a << 16 | b`` in ``set(a, b)``. If none, the victim is the way
   with the smallest slot-0 count (lowest way index on ties; an unused way has count 0); it becomes
   ``key, (c, min(inc, cmax)), 0, ...``. If found, ``bump`` its slots with ``c``.
2. bigram: ``bump`` row ``b`` with ``c``.

``bump(slots, c)``: if ``c`` is in an occupied slot ``i``, its count becomes ``min(cmax, count + inc)``;
otherwise ``c`` goes into the first empty slot (or replaces the last slot when the row is full) with
count ``min(inc, cmax)``. Then the slot moves up while the slot above has a strictly smaller count.

Successors of a context ``(a, b)``: the tokens of the trigram way's occupied slots in order (if the key
is present), followed by the tokens of bigram row ``b`` that are not already listed. Without a
previous token (``a`` is None) only the bigram row is used.

Draft tree from a template: a template is a tuple of ``(parent, rank)`` pairs in breadth-first order;
template node 0 is the root (the committed token not yet fed to the model) and template node
``i >= 1`` is the ``rank``-th successor of template node ``parent < i``, looked up with the context
(token before the parent, parent token). A node whose rank exceeds its parent's successor list, or
whose parent was dropped, is dropped. :func:`make_template` picks the ``max_nodes`` rank paths of
highest integer score (product of per-rank weights) up to depth ``max_depth``.

Count-guided draft tree (:func:`draft_tree_guided`, the rule ``"count-guided"``): the ``n`` draft nodes
(``n = k - 1`` for ``k`` tokens per pass, ``0 <= n <= 255``) of highest estimated path probability,
chosen best-first from the table's integer counts. Constants: ``S0 = 1 << 16`` (the root's score,
probability 1 in Q16), ``M = 8`` (successors kept per node), ``F = 32`` (frontier entries).

* *Merged counts* (:meth:`TrigramTable.successor_counts`): the successor list of a node as above, each
  token with a count: a trigram token its slot's count; a bigram token appended after a stored trigram
  way its bigram count ``>> 2`` (``BIGRAM_BACKOFF_SHIFT``, the backoff discount; it may be 0); with no
  stored way (a miss, or no previous token) the bigram counts unchanged. Trigram and bigram rows count on
  one scale (offline weight ``one`` for a certain successor, online ``+inc`` per committed token).
* *Expanding* a node of score ``S`` (context: the token before it, its token): keep the first ``M``
  entries of its merged list (ranks ``0..M-1``), ``T`` = the sum of their counts; if ``T > 0``,
  ``r = (1 << 32) // T`` (one reciprocal per expansion) and child ``i`` gets the score
  ``(S * c_i * r) >> 32``. No other division. A child never scores above its parent. Each child becomes a
  *candidate* ``(score, creation number, parent node, token)``, inserted in rank order; creation numbers
  count up from 0 over the whole draft. After each insertion, a frontier of more than ``F`` candidates
  drops its lowest-scored one (ties: the latest created).
* *Loop*: expand the root (score ``S0``, context ``(prev, root)``). While fewer than ``n`` nodes are
  chosen and the frontier is not empty: *choose* the candidate of highest score (ties: the earliest
  created), remove it from the frontier, append it to the tree (its token; its parent's tree index), and,
  if fewer than ``n`` nodes are now chosen, expand it. A token may appear under several parents; the
  children of one node are distinct tokens.
* *Output*: ``tokens[0] = root``, ``parents[0] = -1``, then the chosen nodes in choice order (so
  ``parents[j] < j``); ``1 + n`` entries unless the frontier ran empty. Lookups per draft: one per
  chosen node except the last, plus the root's (at most ``n``). The tree for ``n`` is the first
  ``1 + n`` entries of the tree for any larger ``n``; chosen scores never increase in choice order.

Prompt-lookup source (host option, ``history`` given to :func:`draft_tree_guided`): at every expansion the
context is ``history`` (the committed tokens, ending with the root) followed by the path from the root's
child down to the node; its *follower* is the token after the most recent earlier occurrence (ending before
the last token) of its last ``LOOKUP_MAX_N = 4`` tokens, else of its last ``LOOKUP_MIN_N = 3``, else none.
The follower is moved (or inserted) first in the node's merged list with count ``LOOKUP_COUNT = 512`` plus
its listed count (0 if it was not listed), before the first ``M`` entries are kept.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY

FORMAT = "mmfree-trigram"
FORMAT_VERSION = 1
MAGIC = b"MMFTRIGR"
HEADER_BYTES = 4096                       # magic, u32 version, u32 JSON length, JSON, zero padding
ALIGN = LY.ALIGN                          # array offsets are multiples of one DDR burst line
EMPTY_KEY = 0xFFFFFFFF
HASH_MULT = 0x9E3779B1                    # floor(2**32 / golden ratio), odd
MAX_VOCAB = 0xFFFF                        # token ids must fit 16 bits and never equal 0xFFFF
TABLE_FILE = "trigram.bin"                # the model's own table, looked up next to the model

COUNT_MASK = 0xFFFF
TOKEN_SHIFT = 16
BIGRAM_BACKOFF_SHIFT = 2                  # a bigram count appended after a trigram way's slots counts 1/4


class TrigramError(MmfreeError):
    pass


@dataclass(frozen=True)
class TableParams:
    """Geometry and counter rules of a table (recorded in its file header)."""

    sets_log2: int = 14        # 2**14 sets
    ways: int = 4              # contexts per set  -> 65536 contexts, 4 MiB with slots = 15
    slots: int = 15            # successors per context: 1 key word + 15 slot words = 64 bytes
    bigram_slots: int = 4      # successors per token in the on-chip fallback
    one: int = 64              # offline weight of a successor that always follows its context
    inc: int = 64              # online increment per committed token
    cmax: int = 255            # saturation of every count (8-bit counter)

    def check(self) -> TableParams:
        problems = []
        if not 1 <= self.sets_log2 <= 26:
            problems.append(f"sets_log2 must be in [1, 26], got {self.sets_log2}")
        if not 1 <= self.ways <= 64:
            problems.append(f"ways must be in [1, 64], got {self.ways}")
        if not 1 <= self.slots <= 255:
            problems.append(f"slots must be in [1, 255], got {self.slots}")
        if not 1 <= self.bigram_slots <= 255:
            problems.append(f"bigram_slots must be in [1, 255], got {self.bigram_slots}")
        if not 1 <= self.cmax <= COUNT_MASK:
            problems.append(f"cmax must be in [1, {COUNT_MASK}], got {self.cmax}")
        if not 1 <= self.one <= self.cmax:
            problems.append(f"one must be in [1, cmax], got {self.one}")
        if not 1 <= self.inc <= self.cmax:
            problems.append(f"inc must be in [1, cmax], got {self.inc}")
        if problems:
            raise ValueError("bad trigram table parameters: " + "; ".join(problems))
        return self

    @property
    def n_sets(self) -> int:
        return 1 << self.sets_log2


def set_index(a: int, b: int, sets_log2: int) -> int:
    """The set of context ``(a, b)``: the top ``sets_log2`` bits of ``(a << 16 | b) * HASH_MULT mod 2**32``."""
    return (((a << 16 | b) * HASH_MULT) & 0xFFFFFFFF) >> (32 - sets_log2)


def _set_index_array(keys: np.ndarray, sets_log2: int) -> np.ndarray:
    """Vectorised :func:`set_index` on ``uint64`` keys ``a << 16 | b`` (the product is reduced mod 2**32)."""
    low32 = (keys.astype(np.uint64) * np.uint64(HASH_MULT)) & np.uint64(0xFFFFFFFF)
    return (low32 >> np.uint64(32 - sets_log2)).astype(np.int64)


def tokenizer_sha256(path: str | os.PathLike | None) -> str | None:
    """sha256 of a ``tokenizer.json`` file (or of ``DIR/tokenizer.json``); None when there is none."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _slot_tokens(row) -> list[int]:
    out = []
    for w in row:
        w = int(w)
        if w & COUNT_MASK == 0:
            break
        out.append(w >> TOKEN_SHIFT)
    return out


def _slot_pairs(row) -> list[tuple[int, int]]:
    """``(token, count)`` of the occupied prefix of a slot row (stops at the first count 0)."""
    out = []
    for w in row:
        w = int(w)
        if w & COUNT_MASK == 0:
            break
        out.append((w >> TOKEN_SHIFT, w & COUNT_MASK))
    return out


def _bump(row: np.ndarray, c: int, inc: int, cmax: int) -> None:
    """The online counter update of one slot row (see the module docstring), in place."""
    n = len(row)
    words = [int(w) for w in row]
    i = -1
    first_empty = n
    for j, w in enumerate(words):
        if w & COUNT_MASK == 0:
            first_empty = j
            break
        if w >> TOKEN_SHIFT == c:
            i = j
            break
    if i >= 0:
        cnt = min(cmax, (words[i] & COUNT_MASK) + inc)
    else:
        i = first_empty if first_empty < n else n - 1
        cnt = min(inc, cmax)
    words[i] = c << TOKEN_SHIFT | cnt
    while i > 0 and words[i - 1] & COUNT_MASK < cnt:
        words[i - 1], words[i] = words[i], words[i - 1]
        i -= 1
    row[:] = words


def _top_successors(first: np.ndarray, second: np.ndarray, keep: int, one: int, cmax: int):
    """Count pairs ``(first, second)``; per ``first`` keep the ``keep`` most frequent ``second`` (ties: lower id).

    Returns (context, successor, rank, weight, context_total) arrays for the kept pairs, grouped by
    context in ascending order, ranks ascending inside a group."""
    key = first.astype(np.int64) * (MAX_VOCAB + 1) + second.astype(np.int64)
    uk, cnt = np.unique(key, return_counts=True)
    ctx, succ = uk // (MAX_VOCAB + 1), uk % (MAX_VOCAB + 1)
    cnt = cnt.astype(np.int64)
    order = np.lexsort((succ, -cnt, ctx))
    ctx, succ, cnt = ctx[order], succ[order], cnt[order]
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    totals = np.add.reduceat(cnt, starts) if len(cnt) else np.zeros(0, np.int64)
    group = np.cumsum(np.r_[False, ctx[1:] != ctx[:-1]]) if len(cnt) else np.zeros(0, np.int64)
    rank = np.arange(len(ctx)) - starts[group] if len(cnt) else np.zeros(0, np.int64)
    total = totals[group] if len(cnt) else np.zeros(0, np.int64)
    weight = np.clip((cnt * one + total // 2) // np.maximum(total, 1), 1, cmax)
    sel = rank < keep
    return ctx[sel], succ[sel], rank[sel], weight[sel], total[sel]


@dataclass
class TrigramTable:
    """A trigram table: ``trig`` ``uint32 [2**S, W, 1 + K]``, ``bigram`` ``uint32 [V, KB]`` (formats above).

    ``vocab_size`` and ``tokenizer_sha256`` name the tokenizer it was built for (None: built from raw
    token ids); ``meta`` holds provenance (corpus, token count). Online updates mutate the arrays:
    :meth:`copy` first to keep a loaded table pristine."""

    params: TableParams
    vocab_size: int
    tokenizer_sha256: str | None
    trig: np.ndarray
    bigram: np.ndarray
    meta: dict = field(default_factory=dict)

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def empty(cls, vocab_size: int, params: TableParams | None = None, tokenizer_sha256: str | None = None,
              meta: dict | None = None) -> TrigramTable:
        params = (params or TableParams()).check()
        if not 1 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be in [1, {MAX_VOCAB}] (token ids are 16-bit), got {vocab_size}")
        trig = np.zeros((params.n_sets, params.ways, 1 + params.slots), dtype=np.uint32)
        trig[:, :, 0] = EMPTY_KEY
        bigram = np.zeros((vocab_size, params.bigram_slots), dtype=np.uint32)
        return cls(params, vocab_size, tokenizer_sha256, trig, bigram, dict(meta or {}))

    @classmethod
    def build(cls, tokens, vocab_size: int, params: TableParams | None = None, tokenizer_sha256: str | None = None,
              meta: dict | None = None) -> TrigramTable:
        """The offline table of a token stream (a 1-D integer array; ids in ``[0, vocab_size)``)."""
        t = cls.empty(vocab_size, params, tokenizer_sha256, meta)
        p = t.params
        toks = np.asarray(tokens).reshape(-1).astype(np.int64)
        if toks.size and (toks.min() < 0 or toks.max() >= vocab_size):
            raise ValueError(f"token ids outside [0, {vocab_size}) in the stream (min {toks.min()}, max {toks.max()})")
        t.meta.setdefault("tokens", int(toks.size))
        if toks.size >= 2:
            ctx, succ, rank, weight, _ = _top_successors(toks[:-1], toks[1:], p.bigram_slots, p.one, p.cmax)
            t.bigram[ctx, rank] = ((succ << TOKEN_SHIFT) | weight).astype(np.uint32)
        if toks.size >= 3:
            pair = toks[:-2] * (MAX_VOCAB + 1) + toks[1:-1]
            ctx, succ, rank, weight, total = _top_successors(pair, toks[2:], p.slots, p.one, p.cmax)
            heads = np.flatnonzero(rank == 0)                    # one row per context
            a, b = ctx[heads] // (MAX_VOCAB + 1), ctx[heads] % (MAX_VOCAB + 1)
            key = (a << 16) | b
            sets = _set_index_array(key, p.sets_log2)
            order = np.lexsort((key, -total[heads], sets))      # per set: most frequent first, ties lower key
            sets_o = sets[order]
            first = np.flatnonzero(np.r_[True, sets_o[1:] != sets_o[:-1]])
            way = np.arange(len(order)) - first[np.cumsum(np.r_[False, sets_o[1:] != sets_o[:-1]])]
            keep = way < p.ways
            ctx_rows = np.full(len(heads), -1, dtype=np.int64)   # context row -> (set, way) or -1
            ctx_rows[order[keep]] = sets_o[keep] * p.ways + way[keep]
            t.trig.reshape(-1, 1 + p.slots)[ctx_rows[ctx_rows >= 0], 0] = key[ctx_rows >= 0].astype(np.uint32)
            group = np.cumsum(rank == 0) - 1                      # context row of every kept pair
            line = ctx_rows[group]
            ok = line >= 0
            t.trig.reshape(-1, 1 + p.slots)[line[ok], 1 + rank[ok]] = \
                ((succ[ok] << TOKEN_SHIFT) | weight[ok]).astype(np.uint32)
            t.meta.setdefault("contexts_seen", int(len(heads)))
        return t

    def copy(self) -> TrigramTable:
        return TrigramTable(self.params, self.vocab_size, self.tokenizer_sha256, self.trig.copy(),
                            self.bigram.copy(), dict(self.meta))

    # ---- queries ----------------------------------------------------------------------------------------
    def _find_way(self, a: int, b: int) -> tuple[int, int]:
        s = set_index(a, b, self.params.sets_log2)
        key = a << 16 | b
        ways = self.trig[s, :, 0]
        for w in range(self.params.ways):
            if int(ways[w]) == key:
                return s, w
        return s, -1

    def trigram_successors(self, a: int, b: int) -> list[int]:
        """Successor tokens of context ``(a, b)`` in rank order ([] if the context is not stored)."""
        s, w = self._find_way(a, b)
        return _slot_tokens(self.trig[s, w, 1:]) if w >= 0 else []

    def bigram_successors(self, b: int) -> list[int]:
        return _slot_tokens(self.bigram[b])

    def successors(self, a: int | None, b: int) -> list[int]:
        """Trigram successors of ``(a, b)`` then the bigram successors of ``b`` not already listed."""
        return [c for c, _ in self.successor_counts(a, b)]

    def successor_counts(self, a: int | None, b: int) -> list[tuple[int, int]]:
        """:meth:`successors` with the count of each token on the merged scale: ``(token, count)`` pairs.

        A trigram token carries its slot's count (the low 16 bits of the slot word). A bigram token appended
        after a stored trigram way carries its bigram slot's count ``>> BIGRAM_BACKOFF_SHIFT`` (the backoff
        discount; may be 0); without a stored way (a miss, or ``a`` None) the bigram tokens carry their counts
        unchanged. Both rows count on one scale (offline ``one`` per certain successor, online ``inc`` per
        committed token), so the counts of the list are comparable."""
        out: list[tuple[int, int]] = []
        if a is not None:
            s, w = self._find_way(a, b)
            if w >= 0:
                out = _slot_pairs(self.trig[s, w, 1:])
        shift = BIGRAM_BACKOFF_SHIFT if out else 0
        listed = {c for c, _ in out}
        for c, n in _slot_pairs(self.bigram[b]):
            if c not in listed:
                listed.add(c)
                out.append((c, n >> shift))
        return out

    @property
    def n_contexts(self) -> int:
        return int(np.count_nonzero(self.trig[:, :, 0] != EMPTY_KEY))

    @property
    def n_bigram_rows(self) -> int:
        return int(np.count_nonzero(self.bigram[:, 0] & COUNT_MASK))

    @property
    def is_empty(self) -> bool:
        return self.n_contexts == 0 and self.n_bigram_rows == 0

    # ---- online update ------------------------------------------------------------------------------------
    def update(self, a: int | None, b: int, c: int) -> None:
        """Record that ``c`` followed ``a, b`` (``a`` None: only the bigram ``b -> c``)."""
        p = self.params
        if a is not None:
            s, w = self._find_way(a, b)
            if w < 0:
                counts = [int(x) & COUNT_MASK for x in self.trig[s, :, 1]]
                w = counts.index(min(counts))
                self.trig[s, w, :] = 0
                self.trig[s, w, 0] = a << 16 | b
                self.trig[s, w, 1] = c << TOKEN_SHIFT | min(p.inc, p.cmax)
            else:
                _bump(self.trig[s, w, 1:], c, p.inc, p.cmax)
        _bump(self.bigram[b], c, p.inc, p.cmax)

    def observe(self, tokens, history: tuple[int | None, int | None] = (None, None)) -> None:
        """:meth:`update` for every token of ``tokens`` in order; ``history`` = the two tokens before them."""
        a, b = history
        for c in tokens:
            c = int(c)
            if b is not None:
                self.update(a, b, c)
            a, b = b, c

    # ---- files -------------------------------------------------------------------------------------------------
    def header(self) -> dict:
        p = self.params
        big_bytes = self.bigram.nbytes
        trig_off = HEADER_BYTES + LY.round_up(big_bytes)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256,
            "params": asdict(p),
            "hash": {"kind": "fibonacci32", "mult": HASH_MULT, "key": "a << 16 | b",
                     "set": "((key * mult) mod 2**32) >> (32 - sets_log2)"},
            "layout": {"word": "uint32 little-endian", "slot": "token << 16 | count", "empty_key": EMPTY_KEY,
                       "bigram_offset": HEADER_BYTES, "bigram_shape": list(self.bigram.shape),
                       "bigram_bytes": big_bytes, "trigram_offset": trig_off,
                       "trigram_shape": list(self.trig.shape), "trigram_bytes": self.trig.nbytes},
            "contexts": self.n_contexts, "bigram_rows": self.n_bigram_rows,
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        h = self.header()
        big = self.bigram.astype("<u4").tobytes()
        trig = self.trig.astype("<u4").tobytes()
        h["payload_sha256"] = hashlib.sha256(big + trig).hexdigest()
        js = json.dumps(h, sort_keys=True).encode()
        if 16 + len(js) > HEADER_BYTES:
            raise ValueError(f"table header of {len(js)} bytes does not fit {HEADER_BYTES - 16} bytes; shorten meta")
        head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(js)) + js
        pad = h["layout"]["trigram_offset"] - HEADER_BYTES - len(big)
        return head + b"\0" * (HEADER_BYTES - len(head)) + big + b"\0" * pad + trig

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table file atomically; returns its path."""
        from mmfree.atomic import write_bytes

        write_bytes(path, self.to_bytes())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrigramTable:
        """Read a table file; refuses (with the reason and the fix) anything malformed or of another version."""
        p = Path(path)
        if not p.is_file():
            raise TrigramError(f"trigram table {p} does not exist (build one with `mmfree trigram build --out {p}`)")
        return cls.from_bytes(p.read_bytes(), str(p))

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "trigram table") -> TrigramTable:
        rebuild = "rebuild it with `mmfree trigram build`"
        if len(raw) < 16 or raw[:8] != MAGIC:
            raise TrigramError(f"{where} is not an mmfree trigram table (bad magic); {rebuild}")
        version, n = struct.unpack("<II", raw[8:16])
        if version != FORMAT_VERSION:
            raise TrigramError(f"{where} has table format version {version}, this mmfree reads version "
                               f"{FORMAT_VERSION}; {rebuild}")
        try:
            h = json.loads(raw[16:16 + n].decode())
            params = TableParams(**h["params"]).check()
            V = int(h["vocab_size"])
            lay = h["layout"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TrigramError(f"{where} has a damaged header ({exc}); {rebuild}") from None
        if h.get("format") != FORMAT or h.get("format_version") != FORMAT_VERSION:
            raise TrigramError(f"{where}: header says format {h.get('format')!r} version {h.get('format_version')}, "
                               f"expected {FORMAT!r} version {FORMAT_VERSION}; {rebuild}")
        t = cls.empty(V, params, h.get("tokenizer_sha256"), h.get("meta") or {})
        if lay.get("trigram_offset") != t.header()["layout"]["trigram_offset"] or \
                len(raw) != lay["trigram_offset"] + t.trig.nbytes:
            raise TrigramError(f"{where} has {len(raw)} bytes, its header implies "
                               f"{t.header()['layout']['trigram_offset'] + t.trig.nbytes}; the file is truncated or "
                               f"damaged; {rebuild}")
        big = raw[HEADER_BYTES:HEADER_BYTES + t.bigram.nbytes]
        trig = raw[lay["trigram_offset"]:]
        if hashlib.sha256(big + trig).hexdigest() != h.get("payload_sha256"):
            raise TrigramError(f"{where} fails its checksum; the file is damaged; {rebuild}")
        t.bigram = np.frombuffer(big, dtype="<u4").astype(np.uint32).reshape(t.bigram.shape)
        t.trig = np.frombuffer(trig, dtype="<u4").astype(np.uint32).reshape(t.trig.shape)
        return t

    def check_compatible(self, vocab_size: int, tokenizer_sha: str | None, where: str = "the trigram table") -> None:
        """Refuse a table built for another vocabulary or tokenizer (MmfreeError naming both and the fix)."""
        fix = "build one for this model with `mmfree trigram build --model MODEL --out FILE`"
        if self.vocab_size != vocab_size:
            raise TrigramError(f"{where} was built for a vocabulary of {self.vocab_size} tokens, the model has "
                               f"{vocab_size}; {fix}")
        if self.tokenizer_sha256 != tokenizer_sha:
            def name(s):
                return f"tokenizer.json sha256 {s[:16]}…" if s else "no tokenizer (raw token ids)"
            raise TrigramError(f"{where} was built for {name(self.tokenizer_sha256)}, the model has "
                               f"{name(tokenizer_sha)}; {fix}")

    def info(self) -> dict:
        h = self.header()
        p = self.params
        return {"format_version": FORMAT_VERSION, "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_sha256, "params": asdict(p),
                "contexts": h["contexts"], "capacity": p.n_sets * p.ways,
                "fill_permille": h["contexts"] * 1000 // (p.n_sets * p.ways), "bigram_rows": h["bigram_rows"],
                "trigram_bytes": self.trig.nbytes, "bigram_bytes": self.bigram.nbytes,
                "file_bytes": h["layout"]["trigram_offset"] + self.trig.nbytes, "meta": self.meta}


# ---- building from text ---------------------------------------------------------------------------------------
def build_from_documents(docs, tokenizer, vocab_size: int, params: TableParams | None = None,
                         tokenizer_sha: str | None = None, meta: dict | None = None,
                         progress: bool = False) -> TrigramTable:
    """Tokenize ``docs`` (:class:`mmfree.pymodel.data.Document`) with ``tokenizer`` (an end-of-sequence
    token after each, as in training) and build the offline table."""
    from mmfree.pymodel import data as D

    eos = tokenizer.token_id("</s>")
    eos = 2 if eos is None else eos
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(docs) + 1, desc="trigram table", unit="doc")
    parts = []
    for i in range(0, len(docs), 64):
        chunk = docs[i:i + 64]
        parts.append(D.tokenize(chunk, tokenizer, eos) if chunk else np.zeros(0, np.int64))
        if bar is not None:
            bar.update(len(chunk))
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if bar is not None:
        bar.set_postfix_str(f"{len(stream)} tokens, counting")
    m = dict(meta or {})
    m["documents"] = len(docs)
    table = TrigramTable.build(stream, vocab_size, params, tokenizer_sha, m)
    if bar is not None:
        bar.update(1)
        bar.close()
    return table


def default_corpus():
    """The training split of the Python-stdlib corpus (what the default model trained on)."""
    from mmfree.pymodel import data as D

    return D.split(D.stdlib_documents())[0]


def model_vocab_and_dir(model: str) -> tuple[int, Path]:
    """Vocabulary size and directory (for ``tokenizer.json``) of an export directory, a checkpoint or "default"."""
    from mmfree.pymodel.checkpoint import resolve

    p = Path(model)
    if str(model) != "default" and (p / "manifest.json").exists():
        from mmfree.pymodel.intmodel import read_manifest

        return int(read_manifest(p)["config"]["vocab_size"]), p
    d = resolve(model)
    cfg = d / "config.json"
    if not cfg.exists():
        raise MmfreeError(f"no config.json or manifest.json in {d}: not a checkpoint or export directory")
    try:
        return int(json.loads(cfg.read_text())["vocab_size"]), d
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MmfreeError(f"{cfg} has no valid vocab_size ({exc})") from None


def build_for_tokenizer(tokenizer_json: str | os.PathLike, vocab_size: int, corpus: list[str] | None = None,
                        params: TableParams | None = None, progress: bool = False) -> TrigramTable:
    """The table for a tokenizer (``tokenizer.json``) and model vocabulary, from text files or directories
    (``corpus``) or, by default, the training split of the Python-stdlib corpus."""
    from mmfree.pymodel import data as D
    from mmfree.pymodel.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_json)
    if tok.vocab_size > vocab_size:
        raise MmfreeError(f"the tokenizer {tokenizer_json} has {tok.vocab_size} tokens, more than the model's "
                          f"vocabulary of {vocab_size}; they do not belong together")
    if corpus:
        docs = D.file_documents(corpus)
        desc = [str(c) for c in corpus]
    else:
        docs = default_corpus()
        desc = ["python-stdlib:train"]
    return build_from_documents(docs, tok, vocab_size, params, tokenizer_sha256(tokenizer_json),
                                {"corpus": desc}, progress)


def build_for_model(model: str, corpus: list[str] | None = None, params: TableParams | None = None,
                    progress: bool = False) -> TrigramTable:
    """The table of a model (checkpoint, export directory or "default"); see :func:`build_for_tokenizer`."""
    vocab, d = model_vocab_and_dir(model)
    if not (d / "tokenizer.json").exists():
        raise MmfreeError(f"{d} has no tokenizer.json; the table must be built with the model's tokenizer "
                          "(export or train the model with its tokenizer)")
    return build_for_tokenizer(d / "tokenizer.json", vocab, corpus, params, progress)


# ---- draft trees -------------------------------------------------------------------------------------------------
#: Score of a successor of rank r (per mille; roughly how often rank r is the model's next token).
DEFAULT_RANK_WEIGHTS = (600, 160, 70, 40, 25, 16, 10, 8)
DEFAULT_MAX_NODES = 24


def make_template(max_depth: int, max_nodes: int, rank_weights=DEFAULT_RANK_WEIGHTS) -> tuple[tuple[int, int], ...]:
    """The ``max_nodes`` rank paths of highest score, depth <= ``max_depth``, as ``(parent, rank)`` pairs.

    A path's score is the product of its ranks' weights (integers); equal scores prefer the shorter path,
    then the lexicographically smaller one. Every prefix of a chosen path is chosen. The result is in
    breadth-first order (depth, then rank path), template node ``i`` being entry ``i - 1``; node 0 is
    the root. Deterministic: the same arguments give the same template on every machine."""
    weights = [int(w) for w in rank_weights]
    if max_depth < 0 or max_nodes < 0:
        raise ValueError(f"max_depth and max_nodes must be >= 0, got {max_depth}, {max_nodes}")
    if not weights or any(not 0 < w <= 1000 for w in weights):
        raise ValueError(f"rank weights must be integers in (0, 1000], got {rank_weights}")
    if max_depth == 0 or max_nodes == 0:
        return ()
    scale = 1000 ** max_depth
    # heap of (-score scaled to max depth, depth, path); popping gives the best remaining path
    heap = [(-(w * scale // 1000), 1, (r,)) for r, w in enumerate(weights)]
    heapq.heapify(heap)
    chosen = []
    while heap and len(chosen) < max_nodes:
        neg, depth, path = heapq.heappop(heap)
        chosen.append(path)
        if depth < max_depth:
            for r, w in enumerate(weights):
                heapq.heappush(heap, (neg * w // 1000, depth + 1, path + (r,)))
    chosen.sort(key=lambda q: (len(q), q))
    index = {(): 0}
    out = []
    for i, path in enumerate(chosen, start=1):
        index[path] = i
        out.append((index[path[:-1]], path[-1]))
    return tuple(out)


def draft_tree(table: TrigramTable, prev: int | None, root: int, template) -> tuple[list[int], list[int]]:
    """Expand ``template`` from ``root`` (the next token to feed, ``prev`` the token before it or None).

    Returns (tokens, parents) for :meth:`IntModel.verify`: ``tokens[0] == root``, ``parents[0] == -1``,
    then the surviving template nodes in template order, ``parents[j] < j``."""
    tokens, parents = [int(root)], [-1]
    node = [0]                                  # template node -> tree node (-1: dropped)
    succ: dict[int, list[int]] = {}
    for tp, rank in template:
        j = node[tp]
        if j < 0:
            node.append(-1)
            continue
        if j not in succ:
            before = prev if j == 0 else tokens[parents[j]]
            succ[j] = table.successors(before, tokens[j])
        lst = succ[j]
        if rank >= len(lst):
            node.append(-1)
            continue
        tokens.append(lst[rank])
        parents.append(j)
        node.append(len(tokens) - 1)
    return tokens, parents


# ---- count-guided draft trees ----------------------------------------------------------------------------------
GUIDED_ROOT_SCORE = 1 << 16     # S0: the root's score, probability 1 in Q16
GUIDED_MAX_CHILDREN = 8         # M: successors kept per expanded node (ranks 0..M-1)
GUIDED_FRONTIER = 32            # F: candidates held at once; a full frontier drops its lowest
GUIDED_MAX_NODES = 255          # largest n_nodes (draft nodes per step) the rule accepts
LOOKUP_MAX_N = 4                # prompt-lookup source (host option): longest match tried, in tokens
LOOKUP_MIN_N = 3                # shortest match accepted
LOOKUP_COUNT = 512              # count the lookup follower adds on the merged scale (2 x cmax: it leads)
TREE_RULES = ("count-guided", "template")
DEFAULT_TREE_RULE = "template"  # the rule wherever none is named (bench/speculative.py --tree-rules decides)


def check_tree_rule(rule, template=None) -> str:
    """``rule`` (one of TREE_RULES; None: the default, or "template" when a ``template`` is given); MmfreeError
    naming ``tree_rule`` otherwise, or when a template is given with the count-guided rule."""
    if rule is None:
        return "template" if template is not None else DEFAULT_TREE_RULE
    if rule not in TREE_RULES:
        raise TrigramError(f"tree_rule must be one of {', '.join(TREE_RULES)}, got {rule!r}")
    if rule == "count-guided" and template is not None:
        raise TrigramError("tree_rule 'count-guided' chooses its own tree shape: give no template, or "
                           "tree_rule 'template'")
    return rule


def guided_child_scores(parent_score: int, counts) -> list[int]:
    """Child scores of one expansion: ``(parent_score * c * r) >> 32`` with ``r = (1 << 32) // sum(counts)``.

    ``counts`` are the kept successors' counts (at most ``GUIDED_MAX_CHILDREN``, each in [1, 0xFFFF]); one
    reciprocal per expansion, no other division. A child never scores above its parent."""
    total = sum(counts)
    if total == 0:
        return []
    r = (1 << 32) // total
    return [(parent_score * c * r) >> 32 for c in counts]


def check_guided_nodes(n_nodes) -> int:
    """``n_nodes`` as an int in [0, GUIDED_MAX_NODES]; MmfreeError naming the field otherwise."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, (int, np.integer)) \
            or not 0 <= int(n_nodes) <= GUIDED_MAX_NODES:
        raise TrigramError(f"n_nodes (draft nodes per step, k - 1) must be an integer in [0, {GUIDED_MAX_NODES}], "
                           f"got {n_nodes!r}")
    return int(n_nodes)


def lookup_follower(ctx: list[int]) -> int | None:
    """The prompt-lookup source: the token that followed the most recent earlier occurrence of the last ``m``
    tokens of ``ctx``, for ``m`` from LOOKUP_MAX_N down to LOOKUP_MIN_N (the longest match wins); None if none.
    "Earlier" means the occurrence ends before the last token, so its follower is a token of ``ctx``."""
    n = len(ctx)
    for m in range(LOOKUP_MAX_N, LOOKUP_MIN_N - 1, -1):
        if n < m + 1:
            continue
        tail = ctx[n - m:]
        for i in range(n - m - 1, -1, -1):
            if ctx[i:i + m] == tail:
                return ctx[i + m]
    return None


def _merge_lookup(pairs: list[tuple[int, int]], follower: int | None) -> list[tuple[int, int]]:
    """The merged list with the lookup follower first: its count + LOOKUP_COUNT if it was listed, else LOOKUP_COUNT."""
    if follower is None:
        return pairs
    rest = [(c, n) for c, n in pairs if c != follower]
    had = sum(n for c, n in pairs if c == follower)
    return [(follower, had + LOOKUP_COUNT)] + rest


def draft_tree_guided(table: TrigramTable, prev: int | None, root: int, n_nodes: int,
                      history: list[int] | None = None) -> tuple[list[int], list[int]]:
    """The count-guided draft tree from ``root`` (the next token to feed; ``prev`` the token before it or
    None): the ``n_nodes`` nodes of highest estimated path probability, chosen best-first (the rule of the
    module docstring and docs/speculative.md, "Count-guided trees").

    ``history`` (host option, None: off): the committed tokens, ending with ``root``; each expansion then also
    merges the prompt-lookup source (:func:`lookup_follower` of ``history`` + the path to the node) into the
    node's merged list before the first ``M`` are kept (docs/speculative.md, "More sources").

    Returns (tokens, parents) as :func:`draft_tree`: ``tokens[0] == root``, ``parents[0] == -1``, then
    the chosen nodes in choice order, ``parents[j] < j``; at most ``1 + n_nodes`` entries (fewer when the
    frontier runs empty). ``n_nodes`` in [0, GUIDED_MAX_NODES] (MmfreeError otherwise)."""
    n_nodes = check_guided_nodes(n_nodes)
    if history is not None and (not len(history) or int(history[-1]) != int(root)):
        raise TrigramError("history (the committed tokens) must end with root, the token the draft starts from")
    tokens, parents = [int(root)], [-1]
    if n_nodes == 0:
        return tokens, parents
    frontier: list[tuple[int, int, int, int]] = []          # (score, creation number, parent node, token)
    created = 0
    score = GUIDED_ROOT_SCORE
    j = 0                                                    # the node just chosen
    while len(tokens) <= n_nodes:
        before = prev if j == 0 else tokens[parents[j]]
        pairs = table.successor_counts(before, tokens[j])
        if history is not None:
            pairs = _merge_lookup(pairs, lookup_follower(list(history) + _path(tokens, parents, j)))
        kept = pairs[:GUIDED_MAX_CHILDREN]
        for (tok, _), s in zip(kept, guided_child_scores(score, [c for _, c in kept])):
            frontier.append((s, created, j, tok))
            created += 1
            if len(frontier) > GUIDED_FRONTIER:             # drop the lowest score, the latest created on ties
                frontier.remove(min(frontier, key=lambda e: (e[0], -e[1])))
        if not frontier:
            break
        best = max(frontier, key=lambda e: (e[0], -e[1]))  # highest score, the earliest created on ties
        frontier.remove(best)
        score, _, parent, tok = best
        tokens.append(tok)
        parents.append(parent)
        j = len(tokens) - 1
    return tokens, parents


def _path(tokens: list[int], parents: list[int], j: int) -> list[int]:
    """The tokens from the root's child down to node ``j`` (empty for the root)."""
    out = []
    while j > 0:
        out.append(tokens[j])
        j = parents[j]
    return out[::-1]
