"""The trigram drafter's table: hash, offline build, online update, file format, draft templates, CLI.

The update rule is checked against an independent restatement (lists sorted with a stable sort), so
an RTL engine that follows docs/speculative.md and this module agree on every table word."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mmfree.cli as mcli
from mmfree import MmfreeError
from mmfree.pymodel import trigram as TG
from mmfree.pymodel.trigram import EMPTY_KEY, TableParams, TrigramTable, draft_tree, make_template, set_index

ROOT = Path(__file__).resolve().parents[2]


def slots_of(row):
    """[(token, count), ...] of the occupied slots of a row."""
    return [(int(w) >> 16, int(w) & 0xFFFF) for w in row if int(w) & 0xFFFF]


# ---- hash ---------------------------------------------------------------------------------------------------------
def test_set_index_golden_values():
    # locked: the RTL draft engine must produce these sets
    assert [set_index(1, 2, s) for s in (1, 14, 16, 26)] == [1, 11655, 46623, 47742925]
    assert [set_index(31999, 17, s) for s in (1, 14, 16, 26)] == [0, 7487, 29950, 30668883]
    assert set_index(0, 0, 14) == 0


def test_set_index_matches_restated_formula_and_vectorised_form():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65535, 2000)
    b = rng.integers(0, 65535, 2000)
    for s in (1, 7, 14, 20):
        ref = [((int(x) * 65536 + int(y)) * 2654435761 % 2**32) // 2**(32 - s) for x, y in zip(a, b)]
        assert [set_index(int(x), int(y), s) for x, y in zip(a, b)] == ref
        np.testing.assert_array_equal(TG._set_index_array((a << 16) | b, s), ref)


def test_hash_spreads_contexts():
    keys = np.array([(a << 16) | b for a in range(64) for b in range(64)])
    used = np.bincount(TG._set_index_array(keys, 10), minlength=1024)
    assert used.max() <= 12 and np.count_nonzero(used) > 950


# ---- offline build ---------------------------------------------------------------------------------------------------
def test_build_ranks_weights_and_tie_break():
    # context (1, 2) followed by 5 x3, 7 x3, 9 x2, 4 x1: ranks 5, 7 (tie: lower id first), 9, 4
    stream = []
    for c in [7, 5, 9, 4, 5, 7, 9, 7, 5]:
        stream += [1, 2, c]
    t = TrigramTable.build(np.array(stream), 16, TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=2))
    s, w = t._find_way(1, 2)
    assert w >= 0
    one = t.params.one
    # weights: (count * one + total // 2) // total, total = 9 occurrences of the context
    assert slots_of(t.trig[s, w, 1:]) == [(5, (3 * one + 4) // 9), (7, (3 * one + 4) // 9), (9, (2 * one + 4) // 9)]
    assert t.trigram_successors(1, 2) == [5, 7, 9]                # top-3 only: 4 dropped
    assert t.trigram_successors(2, 1) == []
    # bigram row 2: always followed by the 9 tokens above -> top 2 are 5, 7
    assert t.bigram_successors(2) == [5, 7]
    assert t.successors(3, 2) == [5, 7]                           # unknown context: bigram fallback
    assert t.successors(None, 2) == [5, 7]
    assert t.successors(1, 2) == [5, 7, 9]                        # bigram tokens already listed are skipped


def test_build_keeps_most_frequent_contexts_per_set():
    p = TableParams(sets_log2=1, ways=1, slots=2, bigram_slots=1)
    ctxs = [(a, b) for a in range(1, 6) for b in range(1, 6)]
    rng = np.random.default_rng(1)
    freq = {c: int(rng.integers(1, 6)) for c in ctxs}
    stream = []
    for c in ctxs:
        stream += [c[0], c[1], 9] * freq[c]
    stream = np.array(stream)
    t = TrigramTable.build(stream, 16, p)
    # the true trigram counts of the stream (including the ones across the repeated pattern)
    tri = {}
    for x, y, _z in zip(stream[:-2], stream[1:-1], stream[2:]):
        tri[(int(x), int(y))] = tri.get((int(x), int(y)), 0) + 1
    for s in range(2):
        members = [c for c in tri if set_index(c[0], c[1], 1) == s]
        best = min(members, key=lambda c: (-tri[c], c[0] << 16 | c[1]))
        assert int(t.trig[s, 0, 0]) == best[0] << 16 | best[1]
    assert t.n_contexts == 2


def test_build_rejects_tokens_outside_vocab():
    with pytest.raises(ValueError, match="outside"):
        TrigramTable.build(np.array([1, 2, 40]), 32)
    with pytest.raises(ValueError, match="vocab_size"):
        TrigramTable.empty(70000)
    with pytest.raises(ValueError, match="ways"):
        TableParams(ways=0).check()


def test_empty_and_short_streams():
    assert TrigramTable.build(np.array([], dtype=np.int64), 10).is_empty
    t = TrigramTable.build(np.array([3, 4]), 10)
    assert t.n_contexts == 0 and t.bigram_successors(3) == [4] and not t.is_empty


# ---- online update -----------------------------------------------------------------------------------------------------
class RefTable:
    """The update rule restated: rows are lists of [token, count] kept in order by a stable sort."""

    def __init__(self, p: TableParams, vocab: int):
        self.p = p
        self.sets = [[[None, []] for _ in range(p.ways)] for _ in range(p.n_sets)]
        self.big = [[] for _ in range(vocab)]

    def _bump(self, row, c, k):
        for e in row:
            if e[0] == c:
                e[1] = min(self.p.cmax, e[1] + self.p.inc)
                break
        else:
            if len(row) == k:
                row.pop()
            row.append([c, min(self.p.inc, self.p.cmax)])
        row.sort(key=lambda e: -e[1])          # stable: equal counts keep their order

    def update(self, a, b, c):
        if a is not None:
            ways = self.sets[set_index(a, b, self.p.sets_log2)]
            hit = [w for w in ways if w[0] == (a, b)]
            if hit:
                self._bump(hit[0][1], c, self.p.slots)
            else:
                top = [w[1][0][1] if w[1] else 0 for w in ways]
                ways[top.index(min(top))][:] = [(a, b), [[c, min(self.p.inc, self.p.cmax)]]]
        self._bump(self.big[b], c, self.p.bigram_slots)

    def same_as(self, t: TrigramTable) -> bool:
        for s, ways in enumerate(self.sets):
            for w, (key, row) in enumerate(ways):
                k = EMPTY_KEY if key is None else key[0] << 16 | key[1]
                if int(t.trig[s, w, 0]) != k or slots_of(t.trig[s, w, 1:]) != [tuple(e) for e in row]:
                    return False
        return all(slots_of(t.bigram[b]) == [tuple(e) for e in row] for b, row in enumerate(self.big))


@pytest.mark.parametrize("inc,cmax", [(3, 7), (64, 255), (5, 5)])
def test_update_matches_restated_rule(inc, cmax):
    p = TableParams(sets_log2=1, ways=2, slots=3, bigram_slots=2, inc=inc, one=1, cmax=cmax)
    t = TrigramTable.empty(6, p)
    ref = RefTable(p, 6)
    rng = np.random.default_rng(inc)
    seq = rng.integers(0, 6, 3000).tolist()
    seq[1000:1400] = [1, 2, 3, 4] * 100                      # saturate some counters
    a = None
    for i in range(1, len(seq)):
        t.update(a, seq[i - 1], seq[i])
        ref.update(a, seq[i - 1], seq[i])
        a = seq[i - 1]
        if i % 97 == 0:
            assert ref.same_as(t), f"diverged at token {i}"
    assert ref.same_as(t)
    assert t.trig.dtype == np.uint32 and t.bigram.dtype == np.uint32


def test_update_details():
    p = TableParams(sets_log2=1, ways=2, slots=3, bigram_slots=2, inc=10, one=1, cmax=25)
    t = TrigramTable.empty(50, p)
    t.update(1, 2, 7)
    s, w = t._find_way(1, 2)
    assert w == 0 and slots_of(t.trig[s, w, 1:]) == [(7, 10)]
    t.update(1, 2, 8)
    t.update(1, 2, 8)                                          # 8 overtakes 7 (20 > 10)
    assert slots_of(t.trig[s, w, 1:]) == [(8, 20), (7, 10)]
    t.update(1, 2, 9)                                          # equal to 7: stays below it
    t.update(1, 2, 4)                                          # row full: replaces the last slot (9)
    assert slots_of(t.trig[s, w, 1:]) == [(8, 20), (7, 10), (4, 10)]
    for _ in range(5):
        t.update(1, 2, 8)
    assert slots_of(t.trig[s, w, 1:])[0] == (8, 25)            # saturates at cmax
    assert t.bigram_successors(2) == [8, 4]                    # 2 bigram slots: 9 replaced 7, then 4 replaced 9
    t.observe([3, 4, 5], history=(None, None))
    assert t.trigram_successors(3, 4) == [5] and t.bigram_successors(3) == [4]
    t.observe([6], history=(4, 5))
    assert t.trigram_successors(4, 5) == [6]


def test_new_context_evicts_weakest_way():
    p = TableParams(sets_log2=1, ways=2, slots=2, bigram_slots=1, inc=4, one=1, cmax=100)
    t = TrigramTable.empty(300, p)
    same = [(a, b) for a in range(1, 300) for b in (1, 2) if set_index(a, b, 1) == 0][:3]
    (a0, b0), (a1, b1), (a2, b2) = same
    t.update(a0, b0, 5)
    t.update(a0, b0, 5)                                        # way 0: count 8
    t.update(a1, b1, 6)                                        # empty way 1 (count 0) is taken
    assert int(t.trig[0, 1, 0]) == a1 << 16 | b1
    t.update(a2, b2, 7)                                        # evicts way 1 (count 4 < 8)
    assert t.trigram_successors(a1, b1) == [] and t.trigram_successors(a2, b2) == [7]
    assert t.trigram_successors(a0, b0) == [5]


def test_copy_is_independent():
    t = TrigramTable.build(np.array([1, 2, 3, 1, 2, 3]), 8)
    c = t.copy()
    c.update(1, 2, 5)
    assert t.trigram_successors(1, 2) == [3] and 5 in c.trigram_successors(1, 2)


# ---- files -------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def small_table():
    rng = np.random.default_rng(3)
    return TrigramTable.build(rng.integers(0, 40, 3000), 40, TableParams(sets_log2=6, ways=2, slots=5),
                              tokenizer_sha256="ab" * 32, meta={"corpus": ["test"]})


def test_file_round_trip(tmp_path, small_table):
    path = small_table.save(tmp_path / "t.bin")
    raw = path.read_bytes()
    assert raw[:8] == TG.MAGIC
    h = json.loads(raw[16:16 + int.from_bytes(raw[12:16], "little")])
    assert h["vocab_size"] == 40 and h["tokenizer_sha256"] == "ab" * 32 and h["format_version"] == TG.FORMAT_VERSION
    lay = h["layout"]
    assert lay["bigram_offset"] == TG.HEADER_BYTES and lay["trigram_offset"] % TG.ALIGN == 0
    # the arrays sit in the file exactly as the hardware reads them: little-endian uint32 words
    np.testing.assert_array_equal(np.frombuffer(raw[lay["trigram_offset"]:], "<u4").reshape(small_table.trig.shape),
                                  small_table.trig)
    t = TrigramTable.load(path)
    np.testing.assert_array_equal(t.trig, small_table.trig)
    np.testing.assert_array_equal(t.bigram, small_table.bigram)
    assert t.params == small_table.params and t.meta == small_table.meta


def test_bad_files_are_refused(tmp_path, small_table):
    raw = bytearray(small_table.to_bytes())
    cases = {
        "bad magic": b"NOTATABLE" + bytes(raw[9:]),
        "version": bytes(raw[:8]) + (7).to_bytes(4, "little") + bytes(raw[12:]),
        "truncated": bytes(raw[:-64]),
        "checksum": bytes(raw[:-1]) + bytes([raw[-1] ^ 1]),
    }
    for expect, data in cases.items():
        p = tmp_path / f"{expect.replace(' ', '_')}.bin"
        p.write_bytes(data)
        with pytest.raises(MmfreeError, match=expect) as exc:
            TrigramTable.load(p)
        assert "mmfree trigram build" in str(exc.value)
    with pytest.raises(MmfreeError, match="does not exist"):
        TrigramTable.load(tmp_path / "missing.bin")


def test_compatibility_check(small_table):
    small_table.check_compatible(40, "ab" * 32)
    with pytest.raises(MmfreeError, match="vocabulary of 40 tokens, the model has 41"):
        small_table.check_compatible(41, "ab" * 32)
    with pytest.raises(MmfreeError, match="tokenizer.json sha256 abab.*cdcd.*mmfree trigram build"):
        small_table.check_compatible(40, "cd" * 32)
    with pytest.raises(MmfreeError, match="no tokenizer"):
        small_table.check_compatible(40, None)


# ---- draft templates and trees -----------------------------------------------------------------------------------------
def test_make_template_small_case():
    # scores: (0)=600 (0,0)=360 (1)=160 (0,1)=(1,0)=96 ...
    assert make_template(2, 3, (600, 160)) == ((0, 0), (0, 1), (1, 0))
    assert make_template(2, 5, (600, 160)) == ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0))
    assert make_template(0, 5) == () and make_template(3, 0) == ()
    with pytest.raises(ValueError):
        make_template(2, 3, (0, 5))


@pytest.mark.parametrize("depth,nodes", [(1, 4), (4, 24), (6, 64), (3, 200)])
def test_make_template_shape(depth, nodes):
    tpl = make_template(depth, nodes)
    assert tpl == make_template(depth, nodes)
    n_max = sum(len(TG.DEFAULT_RANK_WEIGHTS) ** d for d in range(1, depth + 1))
    assert len(tpl) == min(nodes, n_max)
    depths = [0]
    seen = set()
    for i, (parent, rank) in enumerate(tpl, start=1):
        assert 0 <= parent < i and 0 <= rank < len(TG.DEFAULT_RANK_WEIGHTS)
        assert (parent, rank) not in seen                        # siblings have distinct ranks
        seen.add((parent, rank))
        depths.append(depths[parent] + 1)
        assert depths[-1] >= depths[-2] if i > 1 else True        # breadth-first
        if rank > 0:
            assert (parent, rank - 1) in seen                     # rank r implies rank r - 1
    assert max(depths) <= depth


def test_draft_tree_follows_template():
    p = TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=2)
    t = TrigramTable.build(np.array([1, 2, 3, 4, 1, 2, 5, 9, 1, 2, 3, 4, 2, 3, 6, 1, 2, 3, 4]), 12, p)
    # (1,2) -> 3 (x3), 5 ; (2,3) -> 4 (x3), 6 ; (2,5) -> 9 ; (3,4) -> 1 (x2), 2
    tpl = make_template(3, 6, (600, 160))
    assert tpl == ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 0))
    tokens, parents = draft_tree(t, 1, 2, tpl)
    assert tokens == [2, 3, 5, 4, 6, 9, 1]
    assert parents == [-1, 0, 0, 1, 1, 2, 3]
    # no previous token: the root's children come from the bigram row of 2 (3, then 5)
    tokens, _ = draft_tree(t, None, 2, tpl)
    assert tokens[1:3] == t.bigram_successors(2)[:2] == [3, 5]
    # rank 1 after (2, 5) does not exist: that node is dropped, its sibling's child is kept
    tokens, parents = draft_tree(t, 1, 2, ((0, 1), (1, 0), (1, 1), (2, 0)))
    assert tokens == [2, 5, 9, 1] and parents == [-1, 0, 1, 2]
    # a node whose parent was dropped is dropped too
    assert draft_tree(t, 1, 2, ((0, 1), (1, 1), (2, 0))) == ([2, 5], [-1, 0])
    # an unknown token with no successors: just the root
    assert draft_tree(t, 0, 11, tpl) == ([11], [-1])


def test_trigram_module_is_integer_only():
    """No float literal, true division or float() in the table and drafting code (the RTL must match it)."""
    tree = ast.parse((ROOT / "pymodel" / "trigram.py").read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            bad.append(f"float literal {node.value} at line {node.lineno}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and \
                not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):   # Path / "name"
            bad.append(f"true division at line {node.lineno}")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div):
            bad.append(f"true division at line {node.lineno}")
        elif isinstance(node, ast.Name) and node.id == "float":
            bad.append(f"float() at line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("float"):
            bad.append(f"{node.attr} at line {node.lineno}")
    assert not bad, bad


# ---- command line ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def cli(monkeypatch):
    """``mmfree`` with the trigram subcommands registered (whether or not mmfree/cli.py lists them yet)."""
    if "mmfree.pymodel.cli_trigram" not in mcli.AREAS:
        monkeypatch.setattr(mcli, "AREAS", mcli.AREAS + ["mmfree.pymodel.cli_trigram"])
    return mcli.main


@pytest.fixture(scope="module")
def tok_checkpoint(tmp_path_factory):
    """A random checkpoint with a small trained BPE tokenizer, and a text corpus."""
    from mmfree.pymodel.tokenizer import train_bpe

    from .helpers import random_checkpoint

    root = tmp_path_factory.mktemp("trigram_cli")
    corpus = root / "corpus"
    corpus.mkdir()
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))
    (corpus / "a.py").write_text(text)
    tok = train_bpe([text], 300)
    ck = random_checkpoint(root / "ck", vocab_size=300)
    tok.save(ck / "tokenizer.json")
    other = random_checkpoint(root / "other", vocab_size=301)
    return ck, other, corpus


def test_cli_build_and_info(cli, tok_checkpoint, tmp_path, capsys):
    ck, other, corpus = tok_checkpoint
    out = tmp_path / "t.bin"
    assert cli(["trigram", "build", "--model", str(ck), "--corpus", str(corpus), "--out", str(out),
                  "--sets-log2", "8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 300 and info["contexts"] > 10 and info["params"]["sets_log2"] == 8
    assert info["tokenizer_sha256"] == TG.tokenizer_sha256(ck)
    assert cli(["trigram", "info", str(out), "--model", str(ck)]) == 0
    text = capsys.readouterr().out
    assert "vocabulary 300" in text and "matches" in text
    assert cli(["trigram", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["contexts"] == info["contexts"]
    # another model: refused with the reason
    assert cli(["trigram", "info", str(out), "--model", str(other)]) == 1
    err = capsys.readouterr().err
    assert "vocabulary of 300 tokens, the model has 301" in err
    # bad parameters and inputs: errors, no traceback
    assert cli(["trigram", "build", "--model", str(ck), "--corpus", str(corpus), "--out", str(out),
                  "--ways", "0"]) == 1
    assert "ways must be" in capsys.readouterr().err
    assert cli(["trigram", "build", "--model", str(other), "--out", str(out)]) == 1
    assert "no tokenizer.json" in capsys.readouterr().err
    assert cli(["trigram", "info", str(tmp_path / "nope.bin")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_build_for_model_counts_the_tokenized_corpus(tok_checkpoint):
    from mmfree.pymodel import data as D
    from mmfree.pymodel.tokenizer import load_tokenizer

    ck, _, corpus = tok_checkpoint
    p = TableParams(sets_log2=8)
    t = TG.build_for_model(str(ck), [str(corpus)], p)
    tok = load_tokenizer(ck / "tokenizer.json")
    stream = D.tokenize(D.file_documents([corpus]), tok, 2)
    ref = TrigramTable.build(stream, 300, p, TG.tokenizer_sha256(ck))
    np.testing.assert_array_equal(t.trig, ref.trig)
    np.testing.assert_array_equal(t.bigram, ref.bigram)
    assert replace(p) == t.params


# ---- count-guided draft trees -------------------------------------------------------------------------------------------
def _put_way(t: TrigramTable, a: int, b: int, pairs) -> None:
    """Store context (a, b) with slots ``pairs`` [(token, count), ...] in the first unused way of its set."""
    s = set_index(a, b, t.params.sets_log2)
    w = [int(k) for k in t.trig[s, :, 0]].index(EMPTY_KEY)
    t.trig[s, w, 0] = a << 16 | b
    for i, (c, n) in enumerate(pairs):
        t.trig[s, w, 1 + i] = c << 16 | n


def _put_bigram(t: TrigramTable, b: int, pairs) -> None:
    for i, (c, n) in enumerate(pairs):
        t.bigram[b, i] = c << 16 | n


def test_successor_counts_merge_scale():
    t = TrigramTable.empty(12, TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=3))
    _put_way(t, 1, 2, [(3, 48), (5, 16)])
    _put_bigram(t, 2, [(3, 40), (7, 32), (8, 3)])
    # after a stored way the appended bigram counts are shifted right by 2 (3 >> 2 == 0 stays listed)
    assert t.successor_counts(1, 2) == [(3, 48), (5, 16), (7, 8), (8, 0)]
    assert t.successors(1, 2) == [3, 5, 7, 8]
    # no stored way (a miss, or no previous token): the bigram counts as they are
    assert t.successor_counts(0, 2) == t.successor_counts(None, 2) == [(3, 40), (7, 32), (8, 3)]
    assert t.successor_counts(None, 11) == []


def test_guided_child_scores_formula():
    r = (1 << 32) // 72
    assert TG.guided_child_scores(65536, [48, 16, 8]) == [(65536 * c * r) >> 32 for c in (48, 16, 8)] \
        == [43690, 14563, 7281]
    assert TG.guided_child_scores(65536, [64]) == [65536]          # a certain successor keeps its parent's score
    assert TG.guided_child_scores(65536, [255]) == [65535]         # one reciprocal: floor rounding, never above
    assert TG.guided_child_scores(1000, []) == []


def test_draft_tree_guided_hand_example():
    t = TrigramTable.empty(12, TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=3))
    _put_way(t, 1, 2, [(3, 48), (5, 16)])          # root context: 3 (43690), 5 (14563), then 7 (bigram 32 >> 2)
    _put_bigram(t, 2, [(3, 40), (7, 32)])
    _put_way(t, 2, 3, [(4, 64)])                   # 3 -> 4 certain: 4 keeps 43690
    _put_bigram(t, 5, [(9, 10)])                   # (2, 5) not stored: bigram row 5, count as is -> 9 keeps 14563
    assert TG.draft_tree_guided(t, 1, 2, 0) == ([2], [-1])
    assert TG.draft_tree_guided(t, 1, 2, 1) == ([2, 3], [-1, 0])
    assert TG.draft_tree_guided(t, 1, 2, 4) == ([2, 3, 4, 5, 9], [-1, 0, 1, 0, 3])
    # 4 has no successors; the frontier runs empty after 7: fewer nodes than asked
    assert TG.draft_tree_guided(t, 1, 2, 10) == ([2, 3, 4, 5, 9, 7], [-1, 0, 1, 0, 3, 0])
    # no previous token: the root's list is bigram row 2 unshifted: 3 (40/72), 7 (32/72); 3's context (2, 3)
    assert TG.draft_tree_guided(t, None, 2, 3) == ([2, 3, 4, 7], [-1, 0, 1, 0])
    assert TG.draft_tree_guided(t, 1, 11, 3) == ([11], [-1])       # nothing known after 11


def test_draft_tree_guided_ties_and_frontier_limit():
    # root 1 after 0: 8 children 10..17 of equal count; child 10 + i has 8 children 100 + 8 i .. 107 + 8 i
    t = TrigramTable.empty(200, TableParams(sets_log2=6, ways=4, slots=8, bigram_slots=1))
    _put_way(t, 0, 1, [(10 + i, 1) for i in range(8)])
    for i in range(8):
        _put_way(t, 1, 10 + i, [(100 + 8 * i + j, 5) for j in range(8)])
    toks, parents = TG.draft_tree_guided(t, 0, 1, 200)
    # equal scores: earliest created first, so the children in rank order, each expanded when chosen
    assert toks[1:9] == list(range(10, 18)) and parents[1:9] == [0] * 8
    # 64 grandchildren of equal score were created into a frontier of F = 32 that also held the unchosen
    # children: after child 13 was expanded it held 14..17 and 28 grandchildren (100..127, the 4 created last
    # dropped); each later expansion kept only its first grandchild (each further insertion drops the latest)
    assert TG.GUIDED_FRONTIER == 32
    assert toks[9:] == list(range(100, 128)) + [132, 140, 148, 156]
    assert parents[9:] == [1 + j // 8 for j in range(28)] + [5, 6, 7, 8]
    assert TG.draft_tree_guided(t, 0, 1, 12) == (toks[:13], parents[:13])


def test_draft_tree_guided_keeps_at_most_M_successors():
    t = TrigramTable.empty(64, TableParams(sets_log2=4, ways=2, slots=12, bigram_slots=1))
    _put_way(t, 0, 1, [(10 + i, 100 - i) for i in range(12)])
    toks, _ = TG.draft_tree_guided(t, 0, 1, 20)
    assert TG.GUIDED_MAX_CHILDREN == 8 and toks[1:] == list(range(10, 18))


def _restated_guided(t, prev, root, n):
    """Independent restatement: the frontier as a list kept sorted best-first by (-score, creation)."""
    import bisect

    toks, par, front, made = [root], [-1], [], 0
    j, score = 0, 65536
    while len(toks) <= n:
        lst = t.successor_counts(prev if j == 0 else toks[par[j]], toks[j])[:8]
        total = sum(c for _, c in lst)
        for tok, c in lst:
            bisect.insort(front, (-(score * c * ((1 << 32) // total) >> 32), made, j, tok))
            made += 1
            del front[32:]
        if not front:
            break
        neg, _, p, tok = front.pop(0)
        score = -neg
        toks.append(tok)
        par.append(p)
        j = len(toks) - 1
    return toks, par


def test_draft_tree_guided_matches_restatement_on_random_tables():
    rng = np.random.default_rng(7)
    p = TableParams(sets_log2=3, ways=3, slots=7, bigram_slots=3)
    for _ in range(30):
        t = TrigramTable.empty(24, p)
        # random slot words: unsorted, counts above cmax, duplicate bigram tokens, keys in wrong sets
        t.trig[:, :, 0] = rng.integers(0, 24, t.trig[:, :, 0].shape) << 16 | rng.integers(0, 24, t.trig[:, :, 0].shape)
        t.trig[:, :, 1:] = rng.integers(0, 24, t.trig[:, :, 1:].shape) << 16 | rng.integers(0, 300, t.trig[:, :, 1:].shape)
        t.bigram[:] = rng.integers(0, 24, t.bigram.shape) << 16 | rng.integers(0, 70000, t.bigram.shape) % 65536
        for _ in range(10):
            prev = None if rng.random() < 0.2 else int(rng.integers(0, 24))
            root, n = int(rng.integers(0, 24)), int(rng.integers(0, 60))
            toks, parents = TG.draft_tree_guided(t, prev, root, n)
            assert (toks, parents) == _restated_guided(t, prev, root, n)
            assert len(toks) <= n + 1 and all(0 <= q < j for j, q in enumerate(parents) if j)
            for j in range(len(toks)):          # siblings are distinct tokens (the acceptance walk needs it)
                kids = [toks[i] for i in range(len(toks)) if parents[i] == j]
                assert len(kids) == len(set(kids))


def test_draft_tree_guided_on_a_built_table_prefers_likely_paths():
    stream = np.array(([1, 2, 3, 4, 5] * 20 + [1, 2, 6, 7] * 3) * 2)
    t = TrigramTable.build(stream, 16, TableParams(sets_log2=5, ways=2, slots=4, bigram_slots=2))
    toks, parents = TG.draft_tree_guided(t, 1, 2, 4)
    # the frequent chain 3 4 5 1 beats the rare branch 6 at k = 5: a chain, unlike the template's bushy tree
    assert toks == [2, 3, 4, 5, 1] and parents == [-1, 0, 1, 2, 3]
    assert draft_tree(t, 1, 2, make_template(4, 4))[0] != toks


@pytest.mark.parametrize("bad", [-1, 256, 1.5, True, "3", None])
def test_draft_tree_guided_refuses_bad_n_nodes(bad):
    t = TrigramTable.empty(12, TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=2))
    with pytest.raises(MmfreeError, match=r"n_nodes .*\[0, 255\]"):
        TG.draft_tree_guided(t, 1, 2, bad)


# ---- the prompt-lookup source (host option) ------------------------------------------------------------------------------
def test_lookup_follower_longest_most_recent_match():
    assert TG.LOOKUP_MAX_N == 4 and TG.LOOKUP_MIN_N == 3
    # the last 4 tokens 1 2 3 4 occurred before, followed by 9; a later 3-token match (2 3 4 -> 7) loses to it
    assert TG.lookup_follower([1, 2, 3, 4, 9, 2, 3, 4, 7, 1, 2, 3, 4]) == 9
    # only 3-token matches: the most recent wins
    assert TG.lookup_follower([5, 2, 3, 4, 9, 6, 2, 3, 4, 7, 1, 2, 3, 4]) == 7
    assert TG.lookup_follower([2, 3, 4, 9, 1, 3, 4]) is None          # 2 tokens are not enough
    assert TG.lookup_follower([1, 2, 3]) is None and TG.lookup_follower([]) is None
    assert TG.lookup_follower([7, 7, 7, 7]) == 7                       # overlapping occurrence (ends before the last)


def test_draft_tree_guided_with_the_lookup_source():
    t = TrigramTable.empty(12, TableParams(sets_log2=4, ways=2, slots=3, bigram_slots=3))
    _put_way(t, 1, 2, [(3, 48), (5, 16)])
    _put_bigram(t, 2, [(3, 40), (7, 32)])
    _put_way(t, 2, 3, [(4, 64)])
    _put_bigram(t, 5, [(9, 10)])
    # no match: the plain rule
    assert TG.draft_tree_guided(t, 1, 2, 4, history=[1, 2]) == TG.draft_tree_guided(t, 1, 2, 4)
    # history 6 1 2 5 0 6 1 2: the root's follower 5 leads its list with 16 + 512 (score 59251 of 65536); the path
    # extends the context: after 5 the match 6 1 2 5 gives 0 (512 against bigram 9's 10), after 0 the match
    # 1 2 5 0 gives 6 (its only successor, the score carried over): a chain copying the history
    hist = [6, 1, 2, 5, 0, 6, 1, 2]
    assert TG.draft_tree_guided(t, 1, 2, 3, history=hist) == ([2, 5, 0, 6], [-1, 0, 1, 2])
    assert TG.guided_child_scores(65536, [528, 48, 8])[0] == 59251
    # the copy goes on (each follower certain, the score carried over) ahead of the root's other children
    assert TG.draft_tree_guided(t, 1, 2, 6, history=hist) == ([2, 5, 0, 6, 1, 2, 5], [-1, 0, 1, 2, 3, 4, 5])
    # a follower the table does not list enters with LOOKUP_COUNT; the path extends the context (5 then 9 ...)
    hist = [0, 1, 2, 5, 9, 11, 0, 1, 2]
    toks, parents = TG.draft_tree_guided(t, 1, 2, 3, history=hist)
    assert toks == [2, 5, 9, 11] and parents == [-1, 0, 1, 2]
    with pytest.raises(MmfreeError, match="history .* must end with root"):
        TG.draft_tree_guided(t, 1, 2, 3, history=[2, 1])
    with pytest.raises(MmfreeError, match="lookup .* needs tree_rule 'count-guided'"):
        from mmfree.pymodel.drafters import TrigramDrafter

        TrigramDrafter(t, tree_rule="template", lookup=True)
