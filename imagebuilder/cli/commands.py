"""The command line: argparse in, exit code out.

The only module that prints to the terminal or decides the exit code:
0 ok, 1 build failed, 2 bad usage or config, 130 interrupted (SIGINT or SIGTERM).
Library errors (:class:`~imagebuilder.errors.ImageBuilderError`) become one line
``imagebuilder: error: ...`` plus a hint and, where useful, a log tail.
``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ..config import tree
from ..errors import ConfigError, ImageBuilderError
from ..families import catalogue
from ..progress import JSONRenderer, PlainRenderer, Progress, TTYRenderer
from .grammar import PROG, build_parser, build_sub_parser

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---- helpers ------------------------------------------------------------------


def _progress(ns: argparse.Namespace) -> Progress:
    verbose = bool(getattr(ns, "verbose", False))
    if getattr(ns, "json", False):
        return Progress(JSONRenderer(sys.stdout))
    if sys.stderr.isatty():
        return Progress(TTYRenderer(sys.stderr, verbose=verbose))
    return Progress(PlainRenderer(sys.stderr, verbose=verbose))


def _resolve(ns: argparse.Namespace, **extra: Any) -> tree.Config:
    cli = {o.key: getattr(ns, o.key) for o in tree.OPTIONS if hasattr(ns, o.key)}
    cli.update(extra)
    if getattr(ns, "series", None) is not None:
        cli["series"] = ns.series
    return tree.resolve(cli, config_file=getattr(ns, "config", None))


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


def _lock_path(ns: argparse.Namespace) -> Path:
    from ..repro.lockfile import DEFAULT_LOCK

    return Path(ns.lock or DEFAULT_LOCK)


def _lock_for(ns: argparse.Namespace, cfg: tree.Config) -> Any:
    """The lock to enforce (``--locked``), or None."""
    if not getattr(ns, "locked", False):
        return None
    from ..repro.lock import read_lock

    path = _lock_path(ns)
    if not path.is_file():
        raise ConfigError(
            f"--locked but there is no lock file {path}",
            hint=f"write one with 'imagebuilder lock {cfg.series} ...' or pass --lock FILE",
        )
    return read_lock(path)


# ---- commands -----------------------------------------------------------------


def cmd_build(ns: argparse.Namespace) -> int:
    cfg = _resolve(ns)
    if ns.print_config:
        print(tree.to_toml(cfg), end="")
        return EXIT_OK
    if ns.upload and not ns.name:
        raise ConfigError("--upload needs --name custom/NAME", hint="e.g. --name custom/jammy-web")
    from ..pipeline import build

    progress = _progress(ns)
    result = build(cfg, progress=progress, lock=_lock_for(ns, cfg), debug_shell=ns.debug_shell)
    print(f"{result.output}  sha256 {result.sha256}  {result.size} bytes", file=sys.stderr)
    print(f"manifest: {result.manifest}", file=sys.stderr)
    if ns.test:
        _deploy_test(ns, result.output, cfg.source.cache_dir, progress)
    if ns.upload:
        return _upload(ns, result.output, progress)
    return EXIT_OK


def cmd_releases(ns: argparse.Namespace) -> int:
    today = _dt.date.today()
    rows = [("DISTRO", "VERSION", "CODENAME", "STATUS", "ARCHES")]
    for r in catalogue.RELEASES:
        rows.append(
            (
                r.distro,
                r.display_version(),
                r.codename,
                r.status(today),
                ",".join(r.arches),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_fetch(ns: argparse.Namespace) -> int:
    cfg = _resolve(ns)
    if ns.print_config:
        print(tree.to_toml(cfg), end="")
        return EXIT_OK
    from ..pipeline import get_base

    progress = _progress(ns)
    with progress.stage("base", f"{cfg.series} {cfg.arch} ({cfg.source.base.value})"):
        base = get_base(cfg, progress, lock=_lock_for(ns, cfg))
    print(f"{base.path}  {base.format}  sha256 {base.sha256}")
    return EXIT_OK


def cmd_cache(ns: argparse.Namespace) -> int:
    from ..sources.cache_list import list_cache
    from ..sources.cache_prune import prune_cache

    root = ns.cache_dir or tree.default_cache_dir()
    if ns.action == "list":
        entries = list_cache(root)
        if not entries:
            print(f"cache {root} is empty")
        for e in entries:
            print(f"{e.kind:<10} {e.size / 2**20:9.1f} MiB  {e.name}")
        return EXIT_OK
    freed = prune_cache(root, keep_latest=not ns.all)
    print(f"freed {freed / 2**20:.1f} MiB in {root}")
    return EXIT_OK


def cmd_shell(ns: argparse.Namespace) -> int:
    cfg = _resolve(ns)
    from ..pipeline import build_directory, get_base
    from ..vm.provision import shell

    progress = _progress(ns)
    base = get_base(cfg, progress, lock=_lock_for(ns, cfg))
    with build_directory(cfg) as build_dir:
        return shell(base, cfg, build_dir, progress)


def cmd_export(ns: argparse.Namespace) -> int:
    if not ns.disk.is_file():
        raise ConfigError(
            f"disk image {ns.disk} not found", hint="give the path of a qcow2/raw/vmdk disk"
        )
    cfg = _resolve(ns, series=ns.series or "jammy")
    from ..export.recipe import export_disk

    progress = _progress(ns)
    with progress.stage("export", f"{ns.disk.name} ({cfg.output.filetype.value})"):
        result = export_disk(ns.disk.resolve(), cfg, base=None, progress=progress)
    print(f"{result.path}  sha256 {result.sha256}  {result.size} bytes")
    return EXIT_OK


def cmd_inspect(ns: argparse.Namespace) -> int:
    import json

    from ..export.outputlint import inspect_image

    if not ns.image.is_file():
        raise ConfigError(f"image {ns.image} not found", hint="give the path of a built output")
    report = inspect_image(ns.image)
    if ns.json:
        print(
            json.dumps({"facts": report.facts, "problems": report.problems}, indent=2, default=str)
        )
    else:
        for k, v in report.facts.items():
            print(f"{k:<24} {v}")
        for prob in report.problems:
            print(f"PROBLEM: {prob}")
        print(
            "OK: deployable by MAAS"
            if not report.problems
            else f"{len(report.problems)} problem(s)"
        )
    return EXIT_FAILED if report.problems else EXIT_OK


def _api_key(ns: argparse.Namespace) -> str:
    from ..maas.publish import getpass_prompt, read_api_key

    prompt = getpass_prompt if sys.stdin.isatty() else None
    return read_api_key(ns.api_key_file, environ=os.environ, prompt=prompt)


def _upload(ns: argparse.Namespace, image: Path, progress: Progress) -> int:
    from ..maas.publish import upload_image

    if not ns.maas_url:
        raise ConfigError("no MAAS URL", hint="pass --maas-url or set MAAS_URL")
    res = upload_image(
        image,
        maas_url=ns.maas_url,
        api_key=_api_key(ns),
        name=ns.name,
        title=ns.title,
        architecture=getattr(ns, "architecture", None),
        base_image=getattr(ns, "base_image", None),
        filetype=getattr(ns, "filetype", None),
        progress=progress,
        keep_old=bool(getattr(ns, "keep_old", False)),
    )
    print(f"uploaded {res.get('name')} ({res.get('architecture')}) id {res.get('id')}")
    return EXIT_OK


def cmd_upload(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        raise ConfigError(f"image {ns.image} not found", hint="give the path of a built output")
    return _upload(ns, ns.image, _progress(ns))


def cmd_maas(ns: argparse.Namespace) -> int:
    from ..maas.publish import MAASClient

    key = _api_key(ns)
    client = MAASClient(ns.maas_url, key)
    if ns.action == "list":
        for r in client.list_resources():
            print(
                f"{r.get('id')!s:>5}  {r.get('name')}  {r.get('architecture')}  "
                f"{r.get('title', '')}"
            )
        return EXIT_OK
    if not ns.name:
        raise ConfigError(
            "maas delete needs NAME", hint="e.g. imagebuilder maas delete custom/jammy-web"
        )
    from ..maas.publish import delete_image

    for r in delete_image(maas_url=ns.maas_url, api_key=key, name=ns.name):
        print(f"deleted {r.get('name')} ({r.get('architecture')}) id {r.get('id')}")
    return EXIT_OK


def cmd_lock(ns: argparse.Namespace) -> int:
    from ..repro.lock import resolve_lock, write_lock

    cfg = _resolve(ns)
    progress = _progress(ns)
    with progress.stage("lock", f"{cfg.series} {cfg.arch} ({cfg.source.base.value})"):
        lk = resolve_lock(cfg, progress)
        path = write_lock(lk, _lock_path(ns))
    print(f"{path}  digest {lk.digest}")
    return EXIT_OK


def cmd_bundle(ns: argparse.Namespace) -> int:
    progress = _progress(ns)
    if ns.action == "import":
        from ..repro.bundle_import import import_bundle

        cache = getattr(ns, "cache_dir", None)
        res = import_bundle(
            ns.file,
            Path(cache) if cache else tree.default_cache_dir(),
            progress=progress,
            keyring=Path(ns.keyring) if getattr(ns, "keyring", None) else None,
        )
        for item in res.installed:
            print(f"imported {item}")
        extra = "".join(
            f" --{flag} {path}"
            for flag, path in (
                ("base-image", res.base_image),
                ("customize", res.customize),
                ("curtin-hooks", res.curtin_hooks),
                ("http-dir", res.http_dir),
            )
            if path is not None
        )
        print(
            f"build with: imagebuilder {res.lock.series} --offline --locked "
            f"--lock {res.lock_path}{extra}"
        )
        return EXIT_OK
    from ..repro.bundle_create import create_bundle
    from ..repro.lock import config_from_lock, read_lock

    lk = read_lock(_lock_path(ns))
    values = {o.key: getattr(ns, o.key) for o in tree.OPTIONS if hasattr(ns, o.key)}
    cfg = config_from_lock(lk, values)
    kwargs = {"level": ns.level} if ns.level is not None else {}
    info = create_bundle(cfg, lk, ns.file, progress=progress, **kwargs)
    print(f"{info.path}  sha256 {info.sha256}  {info.size} bytes")
    return EXIT_OK


def _deploy_test(ns: argparse.Namespace, image: Path, cache: Path | None, pr: Progress) -> None:
    from ..deploy import deploy_test

    result = deploy_test(image, firmware=getattr(ns, "firmware", "both"), curtin=ns.curtin,
                         cache_dir=cache, progress=pr)  # fmt: skip
    for r in result.results:
        print(f"deployed {image.name} on {r.firmware}: curtin {r.curtin_seconds:.0f} s, "
              f"modules-final SUCCESS {r.deployed_seconds:.0f} s after power-on, "
              f"ssh {r.user}@ ok; {r.total_seconds:.0f} s in all", file=sys.stderr)  # fmt: skip


def cmd_test(ns: argparse.Namespace) -> int:
    _deploy_test(ns, ns.image, ns.cache_dir, _progress(ns))
    print(f"OK: {ns.image} deploys with curtin and boots ({ns.firmware})")
    return EXIT_OK


def cmd_diff(ns: argparse.Namespace) -> int:
    from ..repro.diff_outputs import diff_outputs, render

    for path in (ns.a, ns.b):
        if not path.is_file():
            raise ConfigError(f"{path} not found", hint="give two built outputs to compare")
    diffs = diff_outputs(ns.a, ns.b)
    if diffs:
        print(render(diffs).rstrip("\n"))
    return EXIT_FAILED if diffs else EXIT_OK


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


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
