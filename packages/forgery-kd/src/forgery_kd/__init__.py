"""Two-in-one knowledge distillation for face forgery detection: a dual-branch RGB+frequency teacher distilled into one RGB student."""

__version__ = "0.1.0"
