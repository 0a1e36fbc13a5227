"""Importing this package registers every built-in method."""
from facefill.methods import baselines, classical, ddpm_ffc, dense_gan, glcic, wgan  # noqa: F401
