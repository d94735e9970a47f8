# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{kvtwist} command: kvcache from the shell, built on L{kvtwist.client}.

    kvtwist [--url URL] [--unix-socket PATH] [--token TOKEN]
            [--output json|text] [--timeout S] COMMAND ...

C{kvtwist --help} and C{kvtwist COMMAND --help} list every command and
option; docs/cli.md gives each command's output, its exit codes, and how
it behaves where a script or a shell depends on it.

The package:

    - L{kvtwist.cli.runner}: L{main} (one command under C{react}) and
      L{run} (the console script), timeouts, interrupts and exit codes;
    - L{kvtwist.cli.parser}: the argparse parser, its global options and
      the argument types;
    - L{kvtwist.cli.invocation}: the typed L{Invocation} every command
      receives and the L{Command} it declares;
    - L{kvtwist.cli.connection}: C{--url}, unix sockets, the HTTP client;
    - L{kvtwist.cli.output}: JSON lines, text values, exact bytes;
    - L{kvtwist.cli.interrupts}: SIGINT and SIGTERM;
    - L{kvtwist.cli.commands}: the subcommands, one module per family.
"""

from kvtwist.cli.commands.kv import parse_json_value
from kvtwist.cli.connection import make_http
from kvtwist.cli.invocation import (
    EXIT_CONFLICT,
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
)
from kvtwist.cli.runner import main, run

__all__ = ["main", "run", "make_http", "parse_json_value", "EXIT_OK",
           "EXIT_SERVER_ERROR", "EXIT_USAGE", "EXIT_CONNECTION", "EXIT_CONFLICT"]
