"""`ustack sandbox`: a private network of its own, ustack serving in it, and a command run
inside with the same view (default: the user's shell); everything goes when the command
exits, and the exit status is the command's. No root is needed where the system allows
unprivileged user namespaces and an ordinary user may open /dev/net/tun (`ustack.userns`):
the process enters a new user namespace, root there over a new network namespace only. As
root only the network namespace is new.

    ustack sandbox --trace --serve echo:7 http:80 -- curl http://10.77.0.2/

The command gets the terminal: Ctrl-C is its (the sandbox ignores SIGINT while it runs);
SIGTERM and SIGHUP to the sandbox are passed on to it.
"""

import argparse
import asyncio
import os
import signal
from typing import Any

from ustack import userns
from ustack.api import Stack
from ustack.cli.args import EXIT_USAGE
from ustack.cli.common import log, warn_kernel_addr
from ustack.cli.serve import Announcer, serving_line

EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126  # as a shell says them


def enter(args: argparse.Namespace) -> str | None:
    """Into the sandbox's network (this process, before any thread or loop): None, or
    why it cannot be made, in one sentence."""
    try:
        if os.geteuid() == 0:
            userns.enter_net_as_root()
            return None
        problem = userns.tun_problem()
        if problem is not None:
            return problem
        userns.enter()
    except OSError as e:
        return userns.problem(e) if os.geteuid() != 0 else f"unshare: {e.strerror or e}"
    return None


class SandboxAnnouncer(Announcer):
    """`serve`'s announcer for the sandbox: once the services listen, the command runs;
    when it exits, the stack stops (`status` is its exit status)."""

    who = "ustack sandbox"

    def __init__(self, command: list[str]) -> None:
        self.command = command or [os.environ.get("SHELL") or "/bin/sh"]
        self.status = EXIT_USAGE
        self._task: asyncio.Task[None] | None = None

    def serving(self, args: argparse.Namespace, stack: Stack, stop: asyncio.Event) -> None:
        warn_kernel_addr(args, stack.dev, stack.device_created)
        log(serving_line(args, stack.mtu, stack.offloads, stack.offload_refused,
                         stack.ipv6_refused), self.who)
        self._task = asyncio.get_running_loop().create_task(self._run(args, stop))

    async def _run(self, args: argparse.Namespace, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        env: dict[str, Any] = dict(os.environ, USTACK_ADDR=args.addr,
                                   USTACK_KERNEL_ADDR=args.kernel_addr.split("/")[0])
        if args.addr6:
            env["USTACK_ADDR6"] = args.addr6
        try:
            proc = await asyncio.create_subprocess_exec(*self.command, env=env)
        except OSError as e:
            log(f"cannot run {self.command[0]}: {e.strerror or e}", self.who)
            self.status = EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else (
                EXIT_NOT_EXECUTABLE)
            stop.set()
            return
        # The terminal's Ctrl-C reaches the command (same process group): it decides.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, _pass_on, proc, sig)
        try:
            code = await proc.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if proc.returncode is None:  # the stack failed under it: it goes too
                proc.kill()
                await proc.wait()
        self.status = code if code >= 0 else 128 - code  # a signal N: 128 + N
        stop.set()


def _pass_on(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
