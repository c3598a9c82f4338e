"""Base disks made without a VM: bootstrap from a mirror into a cloud-image-like layout.

``bootstrap`` (the recipe and its cache), ``layout`` (partition, format, mount, chroot,
bootloader), ``pkgversions`` (the package versions of a base), ``obtain`` (the cached
base for a config, fetched or bootstrapped). Nothing here boots the build VM.
"""
