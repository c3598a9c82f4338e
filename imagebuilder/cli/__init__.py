"""The command line: argparse in, exit code out (the only place that prints).

``main`` parses, runs the library, renders its errors as one line and picks the exit
code; ``grammar`` holds every subcommand, option and help text. Nothing below this
wing imports it.
"""

from .commands import main, main_entry

__all__ = ["main", "main_entry"]
