"""Reading a finished disk without writing to it: partition tables, mounts, libguestfs.

``parttable`` (tables and filesystem signatures from raw bytes), ``access`` (serve the
disk read-only in user space), ``backends`` (which backend reads a root),
``root_mount`` / ``root_files`` (the root mounted read-only, and files read in it),
``appliance`` (libguestfs, for what the host kernel should not mount), ``fsmeta``
(file metadata for the tar).
"""
