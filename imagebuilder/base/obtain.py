"""The cached base disk for a config: downloaded and verified, or bootstrapped.

One question, one answer, for every stage that needs a base (the build, the deploy
test's ephemeral environment). Lock checks belong to the pipeline, which wraps this;
this module knows nothing of locks and never boots a VM.
"""

from __future__ import annotations

from ..config.choices import BaseKind
from ..config.tree import Config
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from ..sources.images import fetch_base_image
from .bootstrap import bootstrap_base


def obtain_base(cfg: Config, progress: Progress) -> BaseDisk:
    """The base ``cfg`` names, from the cache when it is there and still valid."""
    if cfg.source.base is BaseKind.BOOTSTRAP:
        return bootstrap_base(cfg, progress)
    return fetch_base_image(cfg, progress, refresh=cfg.source.refresh)
