"""The backtracking-feature explorer's importable library.

Pure computation (tokens -> activations -> scores) lives apart from I/O. Nothing in this package
imports Streamlit except the module that owns Streamlit's caches and rendering helpers.
"""
