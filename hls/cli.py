"""Command-line glue for this area (see ``mmfree.cli``)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this area's subcommands to the ``mmfree`` parser."""
