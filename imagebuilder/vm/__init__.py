"""The build VM: qemu and its accelerator, the seed, keys, SSH, and the provision recipe.

``qemu`` / ``qemu_cmdline`` / ``uefi`` / ``timeouts`` / ``accel`` (the machine),
``seed`` / ``keys`` / ``ssh`` / ``httpserve`` (talking to it), ``buildenv`` /
``steps`` / ``provision`` (what runs in it). Boots a base disk under a throwaway
overlay, talks to it over SSH with a pinned host key, runs the named steps and powers
it off clean. Nothing here writes an output file.
"""
