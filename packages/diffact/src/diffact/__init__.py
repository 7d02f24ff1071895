"""DiffAct: temporal action segmentation by denoising diffusion."""

__version__ = "0.1.0"
