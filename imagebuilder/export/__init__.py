"""From a finished disk to the file MAAS takes: tar or raw, compressed, with /curtin.

``recipe`` (the stage), ``tarexport`` / ``ddexport`` (the two kinds of output),
``tarstream`` and ``retar`` (reproducible tar streams), ``compress``, ``curtin`` (the
/curtin files), ``overlay`` (a throwaway overlay to add them in), ``outfile``,
``manifest``, ``outputlint`` (the checks of ``imagebuilder inspect``), and their small
shared pieces (``facts``, ``filetypes``, ``throttle``, ``appliance_tcg``). Never
changes the source disk.
"""
