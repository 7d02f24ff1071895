"""Video understanding by denoising: action segmentation (diffact) and surgical triplets (difftriplet)."""

__version__ = "0.1.0"
