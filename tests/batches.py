"""Tensor fixtures shared by the method tests."""
import torch


def tiny_trainable(name: str, tiny: dict, size: int, **extra):
    """A method built from its test file's tiny settings (``extra`` overrides), optimisers ready."""
    from facefill.registry import create_method

    method = create_method(name, size=size, **{**tiny, **extra})
    method.configure_optimizers()
    return method


def centre_batch(size: int, count: int) -> dict:
    """Seeded random images with a centred square hole covering a quarter of the area."""
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return {"image": torch.rand(count, 3, size, size, generator=generator), "mask": mask}


def four_faces(data_root) -> dict:
    """The first four training faces of a prepared 32 px data folder, with fixed centre holes."""
    from facefill.data.dataset import FaceDataset, list_split

    faces = FaceDataset(list_split(data_root, "train")[:4], 32, flip=False, fixed_masks=True)
    return {key: torch.stack([faces[i][key] for i in range(4)]) for key in ("image", "mask")}


def hole_l1_before_and_after(method, data: dict, steps: int = 20) -> tuple[float, float]:
    """Mean hole L1 of ``method.generate`` before and after ``steps`` training steps on ``data``.
    Measured with batch statistics (train mode): 20 steps are too few for BN's running averages."""

    @torch.no_grad()
    def hole_l1():
        out = method.generate(data["image"], data["mask"]).add(1).div(2)
        return float(((out - data["image"]).abs() * data["mask"]).sum() / (data["mask"].sum() * 3))

    start = hole_l1()
    for step in range(steps):
        method.training_step(data, step)
    return start, hole_l1()
