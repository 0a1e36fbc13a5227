"""facefill: restore occluded faces with classical and learned inpainting methods."""

__version__ = "0.1.0"
