"""imagebuilder: build MAAS-ready OS images in Python, without Packer.

The library face of the tool. ``build(config)`` runs the whole pipeline;
``resolve_config({...})`` makes a validated config from plain values the way the
command line does. The library raises :class:`ImageBuilderError` subclasses and
never prints or exits: see ``imagebuilder.errors`` for the tree.

    import imagebuilder
    cfg = imagebuilder.resolve_config({"series": "bookworm", "base": "bootstrap"})
    result = imagebuilder.build(cfg, progress=imagebuilder.Progress())
    print(result.output, result.sha256)
"""

from __future__ import annotations

from typing import Any

from .config.tree import Config, resolve
from .errors import ImageBuilderError
from .progress import Progress
from .version import __version__


def resolve_config(values: dict[str, Any], **kwargs: Any) -> Config:
    """Validate plain option values (the CLI's names, underscores) into a Config."""
    return resolve(values, **kwargs)


def build(cfg: Config, *, progress: Progress | None = None) -> Any:
    """Run the whole pipeline; returns a :class:`imagebuilder.pipeline.BuildResult`."""
    from .pipeline import build as _build

    return _build(cfg, progress=progress)


__all__ = ["Config", "ImageBuilderError", "Progress", "__version__", "build", "resolve_config"]
