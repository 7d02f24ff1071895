"""The two-in-one distillation loss and the baseline terms it is compared with.

``L = w_ce·CE(z_S, y) + w_kd·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ))
      + β_s·D(P_spa(h_S), h_T^spa) + β_f·D(P_freq(h_S), h_T^freq)``

with ``D`` the mean over positions of the squared distance between channel-L2-normalised maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ForgeryKDError

__all__ = ["TwoInOneConfig", "TwoInOneLoss", "attention_transfer", "feature_distance", "kd_logits"]


def kd_logits(z_s: Tensor, z_t: Tensor, tau: float = 4.0) -> Tensor:
    """Hinton KD: ``τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ))``, averaged over the batch."""
    log_p_s = F.log_softmax(z_s / tau, dim=1)
    log_p_t = F.log_softmax(z_t.detach() / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau**2


def _match_size(a: Tensor, b: Tensor) -> Tensor:
    if a.shape[-2:] != b.shape[-2:]:
        a = F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)
    return a


def feature_distance(a: Tensor, b: Tensor, norm: str = "channel_l2") -> Tensor:
    """Mean over positions ``(batch, y, x)`` of ``‖n(a) − n(b)‖²`` over channels.

    ``a``, ``b``: ``[B, C, H, W]`` (``a`` is resized to ``b``'s grid if needed) or ``[B, C]``.
    ``norm="channel_l2"`` L2-normalises each position's channel vector; ``"none"`` leaves them.
    """
    if a.shape[:2] != b.shape[:2]:
        raise ForgeryKDError(
            f"feature_distance: shapes {tuple(a.shape)} and {tuple(b.shape)} differ in [B, C]"
        )
    if a.ndim == 4:
        a = _match_size(a, b)
    b = b.detach()
    if norm == "channel_l2":
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    elif norm != "none":
        raise ForgeryKDError(f"feature_distance norm={norm!r}: use 'channel_l2' or 'none'")
    return (a - b).pow(2).sum(dim=1).mean()


def attention_transfer(a: Tensor, b: Tensor, p: int = 2) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis): maps ``mean_c |h|^p`` L2-normalised, then MSE.

    ``a`` (student) is resized to ``b``'s grid; channel counts may differ.
    """
    a = _match_size(a, b)

    def attention(h: Tensor) -> Tensor:
        return F.normalize(h.abs().pow(p).mean(dim=1).flatten(1), dim=1)

    return (attention(a) - attention(b.detach())).pow(2).mean()


@dataclass
class TwoInOneConfig:
    """Loss weights; all are [reconstruction] defaults (τ = 4 as in mdistiller; β = 5 per branch)."""

    w_ce: float = 1.0
    w_kd: float = 1.0
    tau: float = 4.0
    beta_spa: float = 5.0
    beta_freq: float = 5.0
    feature: str = "fitnet"
    """``fitnet`` (projected maps, :func:`feature_distance`) or ``at`` (attention transfer, weight ×1000)."""
    at_weight: float = 1000.0

    def __post_init__(self) -> None:
        if self.feature not in ("fitnet", "at"):
            raise ForgeryKDError(f"TwoInOneConfig.feature={self.feature!r}: use 'fitnet' or 'at'")
        if self.tau <= 0:
            raise ForgeryKDError(f"TwoInOneConfig.tau={self.tau}: must be > 0")


class TwoInOneLoss:
    """Returns the named terms (already weighted) and their sum ``total`` as a dict of scalars."""

    def __init__(self, cfg: TwoInOneConfig | None = None) -> None:
        self.cfg = cfg or TwoInOneConfig()

    def __call__(
        self,
        logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        student_spa: Tensor | None = None,
        teacher_spa: Tensor | None = None,
        student_freq: Tensor | None = None,
        teacher_freq: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``student_*`` are projected student maps (``fitnet``) or the raw student map (``at``)."""
        c = self.cfg
        terms: dict[str, Tensor] = {"ce": c.w_ce * F.cross_entropy(logits, labels)}
        if c.w_kd and teacher_logits is not None:
            terms["kd"] = c.w_kd * kd_logits(logits, teacher_logits, c.tau)
        for name, beta, s, t in (
            ("spa", c.beta_spa, student_spa, teacher_spa),
            ("freq", c.beta_freq, student_freq, teacher_freq),
        ):
            if beta and s is not None and t is not None:
                if c.feature == "at":
                    terms[name] = beta * c.at_weight * attention_transfer(s, t)
                else:
                    terms[name] = beta * feature_distance(s, t)
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms
