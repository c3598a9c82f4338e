"""The version of imagebuilder, in one place every layer may read.

It lives in the ground floor (beside errors and run) so that modules far down the
layers (the downloader's User-Agent, lock files, bundles) can name it without
importing the package face, which sits above them all. It must import nothing.
"""

__version__ = "0.1.0"
