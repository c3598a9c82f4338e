"""The build configuration: a frozen tree merged once from its layers.

``tree`` (the dataclasses and ``resolve``), ``options`` (the option table: every
configurable value described once) and ``choices`` (the closed sets of values). Pure
values and validation: nothing here touches the network, a disk or a process.
"""
