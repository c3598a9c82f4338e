"""Test doubles that stand in for the outside world (mirrors, servers).

Each fake is a real server or program speaking the real protocol on 127.0.0.1, so
the code under test runs unchanged; none of this is imported by the package.
"""
