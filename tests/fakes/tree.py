"""Write a small tree of text files (e.g. a fake ``curtin`` package for hook tests).

``CURTIN_UTIL_COMMON`` is the part of a fake ``curtin/util.py`` every hook test needs:
the two functions hooks call to read curtin's environment and its dd sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

CURTIN_UTIL_COMMON = """def load_command_environment(env=os.environ, strict=False):
    mapping = {"scratch": "WORKING_DIR", "fstab": "OUTPUT_FSTAB", "config": "CONFIG",
               "target": "TARGET_MOUNT_POINT", "network_state": "OUTPUT_NETWORK_STATE",
               "network_config": "OUTPUT_NETWORK_CONFIG",
               "report_stack_prefix": "CURTIN_REPORTSTACK"}
    return {k: env.get(v) for k, v in mapping.items()}

def get_dd_images(sources):
    if not isinstance(sources, dict):
        return []
    return [s for s in sources.values() if isinstance(s, dict) and s["type"].startswith("dd-")]
"""


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Create ``root/<rel>`` with ``text`` for each entry; return ``root``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root
