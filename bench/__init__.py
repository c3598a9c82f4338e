"""``make bench``: imagebuilder measured against the pipelines it replaces, on this machine.

Four benchmarks (``python -m bench export|boot|build|raw``): the tgz export against
packer-maas's post-processor and virt-tar-out, boot-to-SSH against a bare boot and
packer's polling, the whole build cold and warm, and dd.gz of a sparse disk against
gzip and pigz. Results print as a table and are saved as JSON in ``bench/results/``.
Nothing here is imported by imagebuilder itself.
"""
