"""Importing this package registers every built-in method."""
from facefill.methods import (  # noqa: F401
    baselines, classical, ddpm_ffc, dense_gan, ffc_unet_gan, glcic, two_stage_gan, wgan)
