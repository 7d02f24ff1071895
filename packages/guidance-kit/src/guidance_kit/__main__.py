"""``python -m guidance_kit`` (also ``accelerate launch -m guidance_kit``)."""

from .cli import app

app()
