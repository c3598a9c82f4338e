"""What each OS family is: its releases and how it is built, as data and small functions.

``seam`` (the shape a family fills in), ``catalogue`` (every release of every family),
one module per family (``debian``, ``ubuntu``) with its installer
(``debian_installer``, ``ubuntu_installer``), and what the dpkg families share
(``apt``, ``apt_bootstrap``, ``aptresolve``). Knowledge first: guest commands as
text, host commands as argv, renderers and parsers; a host program runs only through
:mod:`imagebuilder.run`. Nothing here opens the cache or a disk, boots a VM or speaks
HTTP; the stages above ask a family what to do and do it themselves.
"""
