"""Few-shot transfer of diffusion models: adapters, similarity-guided training, adversarial noise selection (DPMs-ANT)."""

__version__ = "0.1.0"
