"""The ``imageport`` command line (typer + rich)."""
