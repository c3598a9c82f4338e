"""Publishing to MAAS: ``publish`` (the upload recipe and its name rules), ``api`` (the
boot-resources wire protocol), ``auth`` (OAuth 1.0 PLAINTEXT signing).

Reads an existing output; never builds one.
"""
