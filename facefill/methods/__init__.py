"""Importing this package registers every built-in method."""
from facefill.methods import classical  # noqa: F401
