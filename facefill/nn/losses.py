"""Losses shared by the methods. Images in [-1, 1] or [0, 1] alike; masks 1 = hole."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(prediction, target, mask, hole_weight=1.0, valid_weight=0.0):
    """Mean squared error, weighted per region and normalised by the weighted pixel count."""
    weights = mask * hole_weight + (1 - mask) * valid_weight
    weights = weights.expand_as(prediction)
    return (weights * (prediction - target) ** 2).sum() / weights.sum().clamp_min(1e-8)


def masked_l1(prediction, target, mask):
    weights = mask.expand_as(prediction)
    return (weights * (prediction - target).abs()).sum() / weights.sum().clamp_min(1e-8)


def total_variation(image, squared=False):
    """Mean absolute (or squared) difference between neighbouring pixels."""
    dh = image[..., 1:, :] - image[..., :-1, :]
    dw = image[..., :, 1:] - image[..., :, :-1]
    if squared:
        return dh.pow(2).mean() + dw.pow(2).mean()
    return dh.abs().mean() + dw.abs().mean()


def gan_d_loss(real_logits, fake_logits):
    """Standard (non-saturating) GAN discriminator loss with logits."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))) / 2


def gan_g_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
