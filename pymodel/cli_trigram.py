"""`mmfree trigram build` and `mmfree trigram info`: the drafter's table for speculative decoding."""

from __future__ import annotations

import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_json, add_model


def register(sub) -> None:
    p = add_subcommand(
        sub, "trigram", _usage, "build or inspect the trigram table of speculative decoding (--draft trigram)",
        "The trigram drafter proposes draft trees from a table of token trigrams (context = the last two\n"
        "tokens -> top successors with 8-bit saturating counts, hashed set-associative buckets, plus a\n"
        "bigram fallback per token). `build` counts a corpus tokenized with the model's tokenizer;\n"
        "`info` prints a table's header. Layout and rules: docs/speculative.md.",
    )
    ss = p.add_subparsers(dest="trigram_command", metavar="ACTION")
    ss.required = True

    b = add_subcommand(
        ss, "build", _build, "build a table from text with the model's tokenizer",
        "Tokenizes --corpus (text files or directories; default: the training split of the Python\n"
        "standard-library corpus the default model trained on) with the tokenizer.json of --model,\n"
        "counts every trigram and bigram, and writes the table to --out atomically. The file records\n"
        "the tokenizer's sha256 and the vocabulary size; generation refuses it for another model.\n"
        "Put it in the model directory as trigram.bin to make it the model's own table.",
    )
    add_model(b, note="its tokenizer and vocabulary")
    b.add_argument("--corpus", nargs="*", default=[], help="text files or directories (default: the Python stdlib)")
    b.add_argument("--out", required=True, help="table file to write (e.g. MODEL_DIR/trigram.bin)")
    b.add_argument("--sets-log2", type=int, default=14, help="log2 of the number of hash sets")
    b.add_argument("--ways", type=int, default=4, help="contexts per set")
    b.add_argument("--slots", type=int, default=15, help="successors per context (15: 64-byte entries)")
    b.add_argument("--bigram-slots", type=int, default=4, help="successors per token in the bigram fallback")
    b.add_argument("--inc", type=int, default=64, help="online increment per committed token (8-bit counters)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json(b, "the table summary as JSON")

    i = add_subcommand(ss, "info", _info, "print a table's header: tokenizer, vocabulary, geometry, fill",
                       "Reads and checks a table file (magic, format version, checksum). With --model it\n"
                       "also checks that the table belongs to that model's tokenizer and vocabulary.")
    i.add_argument("table", help="table file")
    add_model(i, default=None, note="also check that the table belongs to this model")
    add_json(i, "JSON")


def _usage(args) -> int:  # pragma: no cover - argparse requires an action
    raise MmfreeError("give an action: `mmfree trigram build` or `mmfree trigram info`")


def _params(args):
    from dataclasses import replace

    from mmfree.pymodel.trigram import TableParams

    p = replace(TableParams(), sets_log2=args.sets_log2, ways=args.ways, slots=args.slots,
                bigram_slots=args.bigram_slots, inc=args.inc)
    try:
        return p.check()
    except ValueError as exc:
        raise MmfreeError(str(exc)) from None


def _build(args) -> int:
    from mmfree.pymodel.trigram import build_for_model

    params = _params(args)
    table = build_for_model(args.model, args.corpus or None, params, progress=not (args.no_progress or args.json))
    table.save(args.out)
    info = table.info()
    info["out"] = str(args.out)
    if args.json:
        print_json(info)
    else:
        print(f"wrote {args.out}: {info['contexts']} contexts in {info['capacity']} ways "
              f"({info['fill_permille'] / 10:.1f}% full), {info['bigram_rows']} bigram rows, "
              f"{info['file_bytes'] / 2**20:.2f} MiB, from {info['meta'].get('tokens', 0)} tokens")
    return 0


def _info(args) -> int:
    from mmfree.pymodel.trigram import TrigramTable, model_vocab_and_dir, tokenizer_sha256

    table = TrigramTable.load(args.table)
    info = table.info()
    info["table"] = str(args.table)
    if args.model is not None:
        vocab, d = model_vocab_and_dir(args.model)
        table.check_compatible(vocab, tokenizer_sha256(d), f"trigram table {args.table}")
        info["compatible_with"] = str(args.model)
    if args.json:
        print_json(info)
        return 0
    p = info["params"]
    lines = [
        f"trigram table {args.table} (format version {info['format_version']})",
        f"  built for: vocabulary {info['vocab_size']}, tokenizer.json sha256 {info['tokenizer_sha256'] or 'none (raw ids)'}",
        f"  trigram:   2^{p['sets_log2']} sets x {p['ways']} ways x {p['slots']} successors, "
        f"{info['contexts']} / {info['capacity']} contexts ({info['fill_permille'] / 10:.1f}% full), "
        f"{info['trigram_bytes'] / 2**20:.2f} MiB",
        f"  bigram:    {info['vocab_size']} rows x {p['bigram_slots']} successors, {info['bigram_rows']} used, "
        f"{info['bigram_bytes'] / 2**10:.1f} KiB",
        f"  counters:  offline scale {p['one']}, online +{p['inc']}, saturate at {p['cmax']}",
        f"  source:    {info['meta']}",
    ]
    if "compatible_with" in info:
        lines.append(f"  matches the tokenizer and vocabulary of {info['compatible_with']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
