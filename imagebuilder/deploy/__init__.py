"""The deploy test: an output deployed by the real curtin as MAAS does, then booted.

``deploy_test(image, firmware="both")`` (:mod:`.recipe`) is the library face of
``imagebuilder test IMAGE``. The wing knows MAAS's side of a deploy (its curtin
config, its region and rack endpoints, its pass rule) and uses the build VM path
for the ephemeral environment; it never builds or changes an image.
"""

from __future__ import annotations

from .recipe import DeployResult, FirmwareResult, deploy_test

__all__ = ["DeployResult", "FirmwareResult", "deploy_test"]
