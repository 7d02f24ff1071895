"""The similarity-guided DPMs-ANT loss [paper Eq. 5 and 8]."""

from __future__ import annotations

from torch import Tensor

from .errors import TanTransferError

__all__ = ["tan_loss"]


def tan_loss(
    pred: Tensor, eps_star: Tensor, grad: Tensor | None, weight: Tensor | None, gamma: float
) -> Tensor:
    """‖ε* − ε_θ,ψ(x_t*, t) − γ·s_t·g‖², summed over (C, H, W), mean over the batch [code reduction].

    ``pred``, ``eps_star``, ``grad`` (g = ∇ log p(target | x_t*), detached) are ``[B, C, H, W]``; ``weight`` is s_t
    ``[B]``. With ``gamma == 0`` (or ``grad`` None) this is the sum-reduced DDPM ε-MSE.
    """
    if pred.shape != eps_star.shape:
        raise TanTransferError(
            "tan_loss", f"pred {tuple(pred.shape)} and eps_star {tuple(eps_star.shape)} differ"
        )
    target = eps_star.float()
    if grad is not None and gamma != 0:
        if grad.shape != pred.shape or weight is None or weight.shape != (pred.shape[0],):
            raise TanTransferError("tan_loss", "grad must match pred and weight must be [B]")
        w = weight.to(target).view(-1, *([1] * (pred.ndim - 1)))
        target = target - gamma * w * grad.detach().float()
    return (target - pred.float()).pow(2).flatten(1).sum(dim=1).mean()
