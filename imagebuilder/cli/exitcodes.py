"""The exit codes of the command line.

0 ok, 1 build failed (or an output that would not deploy, or two outputs that
differ), 2 bad usage or config, 130 interrupted (SIGINT or SIGTERM). Names only:
handlers return them and ``commands.main`` returns what a handler or an error gives;
nothing here decides a code or imports anything.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # the reader of our output went away, as a shell reports SIGPIPE
