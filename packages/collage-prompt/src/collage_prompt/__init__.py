"""Collage prompting: many images in one vision-LLM call, with a learned arrangement, exact cost model and a resumable OpenAI-compatible client."""

__version__ = "0.1.0"
