"""The command-line options several ``mmfree`` subcommands share, defined once.

``--model``, ``--prompt | --prompt-ids``, ``--json`` and ``--board`` read the same way in every command that
takes them (``mmfree generate``, ``sim``, ``perf``, ``run``, ``build``, ``flash``, ``energy``, ``hls``...).
Help texts that quote board defaults are generated from the board files (``boards/<name>/board.json``), so
they cannot go stale. Imports nothing heavy: ``mmfree --help`` stays instant.
"""

from __future__ import annotations

import argparse

from mmfree import MmfreeError
from mmfree.options import check_choice, choices  # noqa: F401  (re-exported for the CLI modules)

#: What ``--model`` may name, by kind (a command lists the kinds it accepts).
MODEL_KINDS = {
    "default": "'default' (the embedded model)",
    "checkpoint": "a checkpoint directory (HF layout: config.json + model.safetensors)",
    "export": "an `mmfree export` directory",
    "preset": "370M | 1.3B | 2.7B (a shape only: no weights needed)",
}
#: The prompt a command generates from when neither --prompt nor --prompt-ids is given.
DEFAULT_PROMPT = "def "


def add_model(p: argparse.ArgumentParser, default: str | None = "default",
              kinds: tuple[str, ...] = ("default", "checkpoint", "export"), note: str = "") -> None:
    """``--model``: one of ``kinds`` (keys of :data:`MODEL_KINDS`); ``note`` is appended to the help."""
    text = ", ".join(MODEL_KINDS[k] for k in kinds)
    p.add_argument("--model", default=default, help=text + (f"; {note}" if note else ""))


def add_prompt(p: argparse.ArgumentParser, default_text: str | None = DEFAULT_PROMPT) -> None:
    """``--prompt TEXT`` or ``--prompt-ids 1,2,3`` (mutually exclusive); read them with :func:`prompt_ids`."""
    src = p.add_mutually_exclusive_group()
    dflt = f"; with neither option the prompt is {default_text!r}" if default_text else ""
    src.add_argument("--prompt", default=None, help=f"prompt text, encoded with the model's tokenizer{dflt}")
    src.add_argument("--prompt-ids", default=None, help="comma-separated prompt token ids (skips the tokenizer)")


def parse_ids(text: str, option: str = "--prompt-ids") -> list[int]:
    """``"1, 2,3"`` -> ``[1, 2, 3]``; raises :class:`MmfreeError` naming ``option`` on anything else or on an
    empty list. The vocabulary range is the model's to check."""
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MmfreeError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise MmfreeError(f"{option} is empty: the prompt has no tokens; give at least one token id")
    return ids


def stream_prompts(prompt_ids: str | None, streams: int, one_prompt) -> list[list[int]]:
    """The prompts of ``--streams B``: ``--prompt-ids 'a,b;c,d'`` (one per stream, ``;`` between them), else the
    one prompt (``one_prompt()``: its token ids) without its last 0..B-1 tokens (stream s drops s tokens).
    MmfreeError for another number of prompts than B, or a prompt shorter than B tokens."""
    if prompt_ids is not None and ";" in prompt_ids:
        prompts = [parse_ids(part) for part in prompt_ids.split(";")]
        if len(prompts) != streams:
            raise MmfreeError(f"--prompt-ids gives {len(prompts)} prompts (';' between them) for --streams {streams}: "
                              "give one per stream")
        return prompts
    prompt = list(one_prompt())
    if len(prompt) < streams:
        raise MmfreeError(f"the prompt is {len(prompt)} tokens; --streams {streams} uses it without its last "
                          f"0..{streams - 1} tokens: give a longer prompt or one per stream (--prompt-ids 'a,b;c,d')")
    return [prompt[:len(prompt) - s] for s in range(streams)]


def add_json(p: argparse.ArgumentParser, what: str = "one JSON object") -> None:
    """``--json``: print ``what`` instead of text."""
    p.add_argument("--json", action="store_true", help=f"print {what}")


def board_help(sim: bool = False) -> str:
    """The shipped boards with their parts and fabric clocks, read from the board files, plus ``custom:PATH``."""
    from mmfree.boardfile import BOARD_NAMES, load_board

    names = [f"{n} ({(b := load_board(n)).part}, {b.clock_mhz:g} MHz)" for n in BOARD_NAMES]
    return ", ".join((["sim (the accelerator RTL under Verilator)"] if sim else []) + names) + " or custom:PATH.json"


def board_defaults(key: str, fallback) -> str:
    """``"pynq-z2: 2, kv260: 4, zcu104: 1"``: each shipped board file's ``build.<key>`` (``fallback`` where the
    file has none), for help texts that state a per-board default."""
    from mmfree.boardfile import BOARD_NAMES, load_board

    return ", ".join(f"{n}: {(load_board(n).raw.get('build') or {}).get(key, fallback)}" for n in BOARD_NAMES)


def add_board(p: argparse.ArgumentParser, default: str | None = None, sim: bool = False, note: str = "") -> None:
    """``--board``: required when ``default`` is None; ``sim=True`` also offers the simulated board."""
    text = board_help(sim) + (f"; {note}" if note else "")
    if default is None:
        p.add_argument("--board", required=True, help=text)
    else:
        p.add_argument("--board", default=default, help=text)


