# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{kvtwist} subcommands, one module per family. Each module has an
C{add_commands(command)} that adds its subcommands to the parser through
the factory it is given, and a C{COMMANDS} table of L{Command}s.

L{GROUPS} lists the families in the order C{kvtwist --help} shows them;
L{COMMANDS} is every subcommand's L{Command} (C{completion} has none: the
runner answers it, since it needs the parser itself).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

from kvtwist.cli.commands import completion, coordination, dumpload, kv, snapshot, watch
from kvtwist.cli.invocation import Command, CommandFactory

__all__ = ["COMMANDS", "GROUPS"]

GROUPS: Tuple[Callable[[CommandFactory], None], ...] = (
    kv.add_commands,
    watch.add_commands,
    dumpload.add_commands,
    snapshot.add_commands,
    completion.add_commands,
    coordination.add_commands,
)

COMMANDS: Dict[str, Command] = {
    **kv.COMMANDS,
    **watch.COMMANDS,
    **dumpload.COMMANDS,
    **snapshot.COMMANDS,
    **coordination.COMMANDS,
}
