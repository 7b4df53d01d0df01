"""Compatibility shims for third-party packages, each scoped and undone on exit.

r0kit itself needs none of them at runtime: :mod:`r0kit.compat.upstream` exists
only so the parity tests can import the reference implementations (``hpsv2``,
``image-reward``) in a current environment.
"""
