"""The exception tree of imagebuilder.

The library raises these and never prints or exits; only ``cli`` turns them into
a one-line message, a hint and an exit code.

    ImageBuilderError                 exit 1 unless said otherwise
    ├── ConfigError                   exit 2: bad usage, option or config file
    │   └── UnknownSeriesError        a series the release catalogue does not know
    ├── SourceError                   getting a base image or package set
    │   ├── DownloadError             network or HTTP failure
    │   ├── ChecksumError             bytes do not match the published sha256
    │   ├── SignatureError            SHA256SUMS signature missing or bad
    │   └── OfflineError              --offline and the cache lacks something
    ├── CommandError                  a host program failed (argv, code, stderr tail)
    │   └── ToolNotFoundError         a host program is not installed
    ├── BootstrapError                building a base disk with mmdebstrap
    ├── MachineError                  qemu failed or the guest never came up
    ├── SSHError                      talking to the guest
    ├── ProvisionError                a provision step (e.g. the customize script) failed
    ├── DiskError                     reading the finished disk
    ├── ExportError                   writing an output file
    ├── InspectError                  an output would not deploy (lists problems)
    ├── DeployError                   `imagebuilder test`: curtin or the deployed disk failed
    └── MAASError                     the MAAS API refused or failed
        └── MAASAuthError             MAAS rejected the API key
"""

from __future__ import annotations

from collections.abc import Sequence


class ImageBuilderError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: Multi-line context shown under the message (log tails and the like).
        self.details = details


class ConfigError(ImageBuilderError):
    exit_code = 2


class UnknownSeriesError(ConfigError):
    pass


class SourceError(ImageBuilderError):
    pass


class DownloadError(SourceError):
    pass


class ChecksumError(SourceError):
    pass


class SignatureError(SourceError):
    pass


class OfflineError(SourceError):
    pass


class CommandError(ImageBuilderError):
    """A host command exited non-zero."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        import shlex

        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        more = " ..." if len(argv) > 4 else ""
        msg = f"{shlex.join(self.argv[:4])}{more} failed (exit {returncode})"
        if tail:
            msg += f": {tail[0]}"
        super().__init__(msg, hint=hint, details="\n".join(stderr.strip().splitlines()[-30:]))


def host_package_hint(*packages: str) -> str:
    """The fix for a missing host program or file: the host packages that provide it.

    Worded for any host: the package names are those of the distribution
    ``scripts/setup-host.sh`` sets up, which installs every one of them.
    """
    names = " ".join(packages)
    noun = "package" if len(packages) == 1 else "packages"
    return f"install the host {noun} {names} (scripts/setup-host.sh installs them all)"


class ToolNotFoundError(CommandError):
    def __init__(self, tool: str, package: str | None = None) -> None:
        super().__init__([tool], 127, "")
        self.message = f"{tool} not found"
        self.args = (self.message,)
        self.hint = host_package_hint(package or tool)
        self.details = ""


class BootstrapError(ImageBuilderError):
    pass


class MachineError(ImageBuilderError):
    pass


class SSHError(ImageBuilderError):
    pass


class ProvisionError(ImageBuilderError):
    pass


class DiskError(ImageBuilderError):
    pass


class ExportError(ImageBuilderError):
    pass


class InspectError(ImageBuilderError):
    def __init__(self, problems: Sequence[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} problem(s) would make a MAAS deploy fail: "
            + "; ".join(self.problems),
            hint=hint,
        )


class DeployError(ImageBuilderError):
    """The deploy test failed: ``stage`` is where (deploy-vm, curtin, boot, login)."""

    def __init__(
        self, stage: str, message: str, *, hint: str | None = None, details: str = ""
    ) -> None:
        self.stage = stage
        super().__init__(f"{stage}: {message}", hint=hint, details=details)


class MAASError(ImageBuilderError):
    pass


class MAASAuthError(MAASError):
    pass
