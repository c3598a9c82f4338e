"""What each OS family is: its releases and how it is built, as data and small functions.

``catalogue`` lists every release the tool builds. Pure knowledge: nothing here runs a
program, opens a disk or reaches the network; the stages above ask a family what to
do and do it themselves.
"""
