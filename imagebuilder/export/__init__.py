"""From a finished disk to the file MAAS takes: tar or raw, compressed, with /curtin.

``recipe`` (the stage), ``tarstream``, ``compress``, ``curtin`` (the /curtin files),
``overlay`` (a throwaway overlay to add them in), ``manifest``, ``outputlint`` (the
checks of ``imagebuilder inspect``). Never changes the source disk.
"""
