"""The ``avm`` command line: ``avm demo``, ``avm run FILE.py``, ``avm instructions``.

The commands live in :mod:`avm.cli.main` (the console script's entry point is
``avm.cli.main:main``; ``python -m avm.cli.main`` works too) and the live view and end-of-run
summary in :mod:`avm.cli.dashboard`. This package is a client of the public API only, and the
one place (with the HTTP server) that configures logging.
"""
