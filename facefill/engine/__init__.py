"""Engines: training, batch inpainting, evaluation and benchmarks."""
