"""Surgical action triplet recognition by iterative denoising (DiffTriplet), evaluated with ivtmetrics."""

__version__ = "0.1.0"
