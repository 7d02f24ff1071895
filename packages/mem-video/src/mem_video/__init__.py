"""Content and motion memorization in video diffusion models: metrics, audit and detection."""

__version__ = "0.1.0"
