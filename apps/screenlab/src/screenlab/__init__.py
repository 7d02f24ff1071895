"""Screen image collections: cheap labels by collage prompting and face-forgery flags from a distilled detector."""

__version__ = "0.1.0"
