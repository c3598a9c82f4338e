"""Reading a finished disk without writing to it: partition tables, mounts, libguestfs.

``parttable`` (tables and filesystem signatures from raw bytes), ``access`` (serve the
disk read-only and mount its root with the chosen backend), ``guestfs`` (libguestfs
for what the host kernel should not mount), ``fsmeta`` (file metadata for the tar).
"""
