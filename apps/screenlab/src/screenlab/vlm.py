"""The vision-language model a screening job asks: a real OpenAI-compatible endpoint, or collage-prompt's
simulated VLM for offline dry runs (never chosen silently)."""

from __future__ import annotations

import os

import numpy as np

from collage_prompt import CellClassifier, OpenAIChatClient, SimulatedVLM
from collage_prompt.prompt import ClassList

from .errors import ScreenlabError

__all__ = ["describe", "endpoint_vlm", "simulated_vlm"]


def simulated_vlm(images, labels, classes: ClassList, model: str = "gpt-4o", seed: int = 0) -> SimulatedVLM:
    """collage-prompt's offline VLM whose eyes are a `CellClassifier` fitted on ``images`` with class indices
    ``labels``; its token usage follows ``model``'s cost rule, so costs are priced as that model's."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ScreenlabError("the simulated VLM needs labelled images of at least two categories to fit on")
    classifier = CellClassifier(seed=seed).fit(images, labels)
    return SimulatedVLM(classifier, classes, model=model)


def endpoint_vlm(
    base_url: str,
    model: str,
    detail: str = "high",
    api_key_env: str = "OPENAI_API_KEY",
    json_mode: bool = False,
) -> OpenAIChatClient:
    """collage-prompt's client for an OpenAI-compatible endpoint; the key is read from ``api_key_env`` only."""
    if not base_url.startswith(("http://", "https://")):
        raise ScreenlabError(f"--base-url {base_url!r}: give an http(s) URL, e.g. http://localhost:8000/v1")
    return OpenAIChatClient(
        model, base_url=base_url, api_key_env=api_key_env, detail=detail, json_mode=json_mode
    )


def describe(client, api_key_env: str = "OPENAI_API_KEY") -> str:
    """One line saying which VLM answers (and, for an endpoint, whether a key was found; never the key)."""
    if isinstance(client, SimulatedVLM):
        return (
            f"the SIMULATED VLM (collage-prompt's offline stand-in, token usage priced as {client.model}): "
            "its labels are a dry run, not a model's answers"
        )
    key = "found" if os.environ.get(api_key_env) else "not set, sending the placeholder 'EMPTY'"
    return f"{client.model} at {client.host} (key from ${api_key_env}: {key})"
