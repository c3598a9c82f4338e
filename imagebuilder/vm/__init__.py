"""The build VM: qemu and its accelerator, the seed, keys, SSH, and the provision recipe.

Boots a base disk under a throwaway overlay, talks to it over SSH with a pinned host
key, runs the named steps and powers it off clean. Nothing here writes an output file.
"""
