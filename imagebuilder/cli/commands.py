"""The command line's entry point: argv in, exit code out.

:func:`main` picks the subcommand's handler from :data:`COMMANDS` (the handlers live
in ``build_commands``, ``info_commands``, ``maas_commands`` and ``repro_commands``),
or the build when the first word is no subcommand, and runs it with SIGTERM raised
as an interrupt so every context manager cleans up. Library errors
(:class:`~imagebuilder.errors.ImageBuilderError`) become one line
``imagebuilder: error: ...`` plus a hint and, where useful, a log tail; the exit
code is the handler's, the error's, or 130 when interrupted. ``main(argv)`` is
callable from tests. No subcommand's work is done here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from ..errors import ImageBuilderError
from .build_commands import cmd_build, cmd_export, cmd_fetch, cmd_shell
from .exitcodes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .grammar import PROG, build_parser, build_sub_parser
from .info_commands import cmd_cache, cmd_inspect, cmd_releases
from .maas_commands import cmd_maas, cmd_test, cmd_upload
from .repro_commands import cmd_bundle, cmd_diff, cmd_lock


def _print_error(exc: ImageBuilderError) -> None:
    print(f"{PROG}: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    if exc.details:
        for line in exc.details.rstrip().splitlines():
            print(f"  | {line}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an exception so every context manager cleans up."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling main() from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "releases": cmd_releases,
    "fetch": cmd_fetch,
    "cache": cmd_cache,
    "shell": cmd_shell,
    "export": cmd_export,
    "inspect": cmd_inspect,
    "upload": cmd_upload,
    "maas": cmd_maas,
    "lock": cmd_lock,
    "bundle": cmd_bundle,
    "diff": cmd_diff,
    "test": cmd_test,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _sigterm_as_interrupt():
            if argv and argv[0] in COMMANDS:
                ns = build_sub_parser(argv[0]).parse_args(argv[1:])
                return COMMANDS[argv[0]](ns)
            if (argv and argv[0] in ("-h", "--help")) or not argv:
                build_parser().print_help()
                return EXIT_OK if argv else EXIT_USAGE
            return cmd_build(build_parser().parse_args(argv))
    except ImageBuilderError as exc:
        _print_error(exc)
        return exc.exit_code
    except _Terminated:
        print(f"{PROG}: terminated; cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (``imagebuilder releases | head``): stop
        # quietly, as other tools do, instead of a traceback when Python flushes stdout.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
