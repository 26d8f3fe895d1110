"""Runnable grdr jobs and the ``grdr-index`` command-line interface."""
