"""Few-shot adaptation, fast sampling and cheap guidance for diffusion models: tan-transfer, adam-sampler, guidance-kit."""

__version__ = "0.1.0"
