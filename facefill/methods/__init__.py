"""Importing this package registers every built-in method."""
from facefill.methods import baselines, classical, dense_gan  # noqa: F401
