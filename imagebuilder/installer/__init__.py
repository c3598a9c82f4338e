"""Installer builds (``--layout flat|lvm``): the family's OS installer boots with no
keystrokes and installs onto a blank disk.

``build`` (the stage), ``boot`` (the installer VM and its console watch), ``iso`` and
``isofetch`` (installer media), ``netboot`` (a netboot kernel and initrd from the
package archive), ``preflight`` (does the mirror hold what it downloads). The answers
and the installer's own rules come from the family. Nothing here exports.
"""
