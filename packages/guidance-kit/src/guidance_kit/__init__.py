"""Anti-Memorization Guidance and Compress Guidance for diffusers pipelines."""

__version__ = "0.1.0"
