"""The one exception type of adam-sampler."""


class AdamSamplerError(ValueError):
    """Bad input to adam-sampler: the message names the parameter, its value and how to fix it."""
