"""Reproducible and air-gapped builds: the lock, bundles, and diffs of outputs.

``lock`` (resolve every input), ``lock_check`` (drift refused), ``lock_inputs``
(digests of local inputs), ``lockfile`` (its TOML form), ``bundle_create`` /
``bundle_import`` (everything a locked build needs, for an air-gapped host),
``diff_outputs`` / ``diff_disks`` / ``diff_read`` (what differs between two outputs
or raw disks). Diffs never build or publish.
"""
