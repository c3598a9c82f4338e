"""A recording stand-in for the build VM's SSH session, for the provisioning steps.

It records each command a step sends and answers every one with success; ``btime``
(the boot time a step reads from /proc/stat) gets ``BTIME``. It proves what a step
asks the guest to run, never that the guest could run it.
"""

from __future__ import annotations

from typing import Any

from imagebuilder.vm.ssh import Result

BTIME = 1700000123


class FakeGuest:
    """Records the commands a step sends; every one succeeds."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, **_: Any) -> Result:
        self.commands.append(command)
        return Result(0, ())

    def output(self, command: str, **_: Any) -> str:
        self.commands.append(command)
        return str(BTIME) if "btime" in command else ""
