"""Installer builds (``--layout flat|lvm``): an OS installer boots with no keystrokes
and installs onto a blank disk.

``build`` (the stage), ``boot`` (the installer VM and its console watch), ``iso`` and
``isofetch`` (installer media), ``netboot`` (the netboot kernel and initrd), answer
files, and the mirror preflight. Nothing here exports.
"""
