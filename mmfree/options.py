"""Typed options checked where they are parsed: a ``typing.Literal[...]`` type is the one list of a typed
option's values, for argparse ``choices=`` (the app layer) and for library entry points (every layer).
Base layer: imports nothing of mmfree but :class:`mmfree.MmfreeError`."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from mmfree import MmfreeError


def check_choice(value, allowed, option: str):
    """``value`` if it is one of ``allowed`` (a ``typing.Literal[...]`` type or a sequence), else
    :class:`MmfreeError` naming ``option`` and the choices: the check a library entry point makes on a typed
    option that may not have come through argparse (whose ``choices=`` should be ``choices(allowed)``)."""
    if value not in choices(allowed):
        raise MmfreeError(f"{option} must be one of {', '.join(map(repr, choices(allowed)))}, got {value!r}")
    return value


def choices(allowed) -> tuple:
    """The values of a ``typing.Literal[...]`` type (or of a sequence), for argparse ``choices=``."""
    return get_args(allowed) if get_origin(allowed) is Literal else tuple(allowed)
