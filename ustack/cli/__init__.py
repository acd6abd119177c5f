"""The `ustack` command: `serve` services, or `connect` like netcat.

Exit status: 0 success; 1 connection error (refused, reset, timed out);
2 usage or environment error (bad arguments, no permission, no TUN, device busy, an
address the kernel cannot reach); 130 `connect` interrupted (Ctrl-C), as shells expect.

`args` holds the parser and argument types, `commands` what each subcommand does.
"""

from ustack.cli.args import EXIT_CONNECTION, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser
from ustack.cli.commands import main

__all__ = ["EXIT_CONNECTION", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser",
           "main"]
