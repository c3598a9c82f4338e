"""The subcommands for what a built image meets on its way into MAAS: ``test``,
``upload`` and ``maas list|delete``.

``test`` deploys the image with curtin in a VM the way MAAS would and boots it;
``upload`` publishes it to a MAAS region; ``maas`` lists or deletes what the region
holds. The build command reuses the test and the upload for ``--test`` and
``--upload``. Handlers print their results and return an exit code; they never
catch the library's errors (``commands.main`` renders those).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..progress import Progress
from .exitcodes import EXIT_OK
from .from_args import progress_for


def _api_key(ns: argparse.Namespace) -> str:
    from ..maas.publish import getpass_prompt, read_api_key

    prompt = getpass_prompt if sys.stdin.isatty() else None
    return read_api_key(ns.api_key_file, environ=os.environ, prompt=prompt)


def upload_output(ns: argparse.Namespace, image: Path, progress: Progress) -> int:
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
    return upload_output(ns, ns.image, progress_for(ns))


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


def deploy_test_output(
    ns: argparse.Namespace, image: Path, cache: Path | None, pr: Progress
) -> None:
    from ..deploy import deploy_test

    result = deploy_test(image, firmware=getattr(ns, "firmware", "both"), curtin=ns.curtin,
                         cache_dir=cache, progress=pr)  # fmt: skip
    for r in result.results:
        print(f"deployed {image.name} on {r.firmware}: curtin {r.curtin_seconds:.0f} s, "
              f"modules-final SUCCESS {r.deployed_seconds:.0f} s after power-on, "
              f"ssh {r.user}@ ok; {r.total_seconds:.0f} s in all", file=sys.stderr)  # fmt: skip


def cmd_test(ns: argparse.Namespace) -> int:
    deploy_test_output(ns, ns.image, ns.cache_dir, progress_for(ns))
    print(f"OK: {ns.image} deploys with curtin and boots ({ns.firmware})")
    return EXIT_OK
