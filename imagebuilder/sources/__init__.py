"""Where bases come from: the cache, downloads, and verified base images.

``cache`` (content-addressed blobs and records), ``cache_list`` / ``cache_prune``
(``imagebuilder cache list|prune``), ``download`` (HTTP that resumes), ``images``
(cloud images fetched and checked against signed checksums), ``basedisk`` (what a
base disk is, however it was obtained). Nothing here boots a VM or writes an output.
"""
