"""Where the project's data directories (``seeds/``, ``curtin_hooks/``) are.

In a source checkout or an editable install they sit beside the package; an
installed wheel puts them under ``<prefix>/share/imagebuilder/``. This module only
finds them; it reads nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The directory ``name`` (``seeds`` or ``curtin_hooks``) shipped with imagebuilder."""
    for root in (_CHECKOUT, Path(sys.prefix) / "share" / "imagebuilder"):
        if (root / name).is_dir():
            return root / name
    return _CHECKOUT / name  # the caller's error names the expected place
