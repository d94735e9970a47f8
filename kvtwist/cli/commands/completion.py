# -*- test-case-name: tests.unit.test_cli -*-
"""
C{kvtwist completion bash|zsh}: print a shell completion script, made by
shtab from the C{kvtwist} parser itself, so it can never miss a command or
an option. The runner answers it (it needs the parser); this module adds
the subcommand and writes the script.
"""

from __future__ import annotations

import argparse

from kvtwist.cli.invocation import CommandFactory

__all__ = ["COMPLETION_SHELLS", "add_commands", "completion_script"]

#: The shells C{kvtwist completion} writes a script for.
COMPLETION_SHELLS = ("bash", "zsh")


def add_commands(command: CommandFactory) -> None:
    """Add C{completion} through the parser's subcommand factory."""
    sub = command(
        "completion", "print a shell completion script (bash or zsh) for kvtwist",
        "bash:  kvtwist completion bash > ~/.local/share/bash-completion/completions/kvtwist\n"
        "zsh:   kvtwist completion zsh > \"${fpath[1]}/_kvtwist\"   (then: compinit)\n"
        "It completes commands and options (and file names where a FILE goes);\n"
        "it never asks the server for keys.\n\n",
    )
    sub.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL",
                     help="one of: %s" % (", ".join(COMPLETION_SHELLS),))


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """
    The completion script of C{shell} for the C{kvtwist} parser, made by
    shtab from the parser itself, so it can never miss a command or an
    option.
    """
    import shtab

    def files_where_files_go(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if action.metavar in ("FILE", "PATH"):
                # shtab reads this attribute; argparse's Action does not declare it.
                action.complete = shtab.FILE  # type: ignore[attr-defined]  # shtab's own
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):  # the subcommands
                    files_where_files_go(action.choices[sub])

    files_where_files_go(parser)
    return shtab.complete(parser, shell=shell)
