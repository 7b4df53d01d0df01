"""Subcommands of the ``r0kit`` command, one module each."""
