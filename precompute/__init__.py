"""Offline pipeline: `python -m precompute --help`."""
