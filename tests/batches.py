"""Tensor fixtures shared by the method tests."""
import torch


def centre_batch(size: int, count: int) -> dict:
    """Seeded random images with a centred square hole covering a quarter of the area."""
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return {"image": torch.rand(count, 3, size, size, generator=generator), "mask": mask}
