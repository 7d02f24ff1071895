"""Gradient homogenization on a shared representation (RotoGrad, Javaloy & Valera, ICLR 2022).

``split(h)`` hands each task ``k`` its own view of the shared student map ``h`` ``[B, C, *]``. A custom
autograd function receives every task's gradient ``g̃_k`` with respect to its view in the one backward
pass, and returns for ``h`` the combination the ``mode`` asks for:

* ``none`` — ``Σ_k g_k`` (plain summed loss);
* ``norm_balance`` — ``Σ_k m·g_k/‖g_k‖`` with ``m = mean_k ‖g_k‖``;
* ``rotograd_scale`` — RotoGrad's magnitude scaling: ``c_k = ‖g_k‖/‖g_k^ref‖`` (reference at step 0,
  retaken at ``burn_in``), ``α_k = c_k/Σc``, ``C = Σ α_k‖g_k‖``, ``Σ_k C·g_k/‖g_k‖``;
* ``rotate_only`` — task ``k`` sees ``R_k·h`` (``R_k ∈ SO(d)`` on the first ``d = rotation_dim``
  channels at every position, used detached); ``h`` receives ``Σ g_k`` with ``g_k = R_kᵀ g̃_k``;
* ``rotograd`` — rotations plus the ``rotograd_scale`` magnitudes (the default);
* ``pcgrad`` — when ``g_i·g_j < 0`` project ``g_i`` off ``g_j`` (in task order), then sum.

Rotations learn from ``mean_b ‖R_k ḡ_b − g̃_{k,b}‖²`` where ``ḡ`` averages the ``g_k`` after rescaling
each to the norm of their mean. Its gradient is computed in the same backward pass and returned for
the rotation matrices, so it flows into the :class:`Rotations` parameters through ``accelerator.backward``
(DDP, gradient scaling and clipping treat it like any other gradient). Norms are over the whole batch
tensor, as in the ``rotograd`` library. Set ``grad_scale`` to the loss-scaler's scale under fp16: stored
gradients and statistics are divided by it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import ForgeryKDError

__all__ = ["HOMOGENIZE_MODES", "GradientHomogenizer", "Rotations", "rotate"]

HOMOGENIZE_MODES = ("none", "norm_balance", "rotograd_scale", "rotate_only", "rotograd", "pcgrad")
_ROTATING = ("rotate_only", "rotograd")
_EPS = 1e-15


def rotate(h: Tensor, rotation: Tensor) -> Tensor:
    """Apply ``rotation`` ``[d, d]`` to the first ``d`` channels of ``h`` ``[B, C, *]`` at every position."""
    d = rotation.shape[0]
    lo = torch.einsum("ij,bj...->bi...", rotation.to(h.dtype), h[:, :d])
    return lo if d == h.shape[1] else torch.cat([lo, h[:, d:]], dim=1)


class Rotations(nn.Module):
    """``K`` rotation matrices ``[K, d, d]``, ``R = matrix_exp(A − Aᵀ)`` with ``A`` starting at 0.

    ``param="geotorch"`` uses geotorch's ``orthogonal(triv="expm")`` like the ``rotograd`` library
    (optional extra ``forgery-kd[rotograd]``).
    """

    def __init__(self, num: int, dim: int, param: str = "expm") -> None:
        super().__init__()
        self.num, self.dim, self.param = num, dim, param
        if param == "expm":
            self.skew = nn.Parameter(torch.zeros(num, dim, dim))
        elif param == "geotorch":
            try:
                import geotorch
            except ImportError as err:
                raise ForgeryKDError(
                    "rotation_param='geotorch' needs geotorch: pip install 'forgery-kd[rotograd]'"
                ) from err
            self.mats = nn.ParameterList([nn.Parameter(torch.eye(dim)) for _ in range(num)])
            for i in range(num):
                geotorch.orthogonal(self.mats, str(i), triv="expm")
        else:
            raise ForgeryKDError(f"rotation_param={param!r}: use 'expm' or 'geotorch'")

    def forward(self) -> Tensor:
        """The rotation matrices ``[K, d, d]``."""
        if self.param == "expm":
            return torch.linalg.matrix_exp(self.skew - self.skew.transpose(1, 2))
        return torch.stack([self.mats[i] for i in range(self.num)])


class _Split(torch.autograd.Function):
    """Forward: ``K`` (rotated) copies of ``h``. Backward: the homogenized gradient for ``h``, and
    the rotation-loss gradient for the rotation matrices."""

    @staticmethod
    def forward(
        ctx: Any, homogenizer: GradientHomogenizer, h: Tensor, rotations: Tensor
    ) -> tuple[Tensor, ...]:
        ctx.homogenizer = homogenizer
        ctx.save_for_backward(rotations)
        if homogenizer.rotating:
            return tuple(rotate(h, rotations[k]) for k in range(homogenizer.num_tasks))
        return tuple(h.clone() for _ in range(homogenizer.num_tasks))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, Tensor, Tensor | None]:
        (rotations,) = ctx.saved_tensors
        grad_h, grad_rot = ctx.homogenizer._backward(list(grads), rotations)
        return None, grad_h, grad_rot


class GradientHomogenizer(nn.Module):
    """Combine per-task gradients on a shared representation; see the module docstring for modes.

    Args:
        num_tasks: number of views ``split`` returns (e.g. 2: spatial and frequency projectors).
        channels: channel count ``C`` of the shared map.
        mode: one of :data:`HOMOGENIZE_MODES`.
        burn_in: step at which ``rotograd*`` retakes its reference norms (library default 20).
        rotation_dim: rotate only the first ``min(C, rotation_dim)`` channels (cost is O(d³)).
        rotation_param: ``expm`` (pure torch) or ``geotorch``.
    """

    def __init__(
        self,
        num_tasks: int,
        channels: int,
        mode: str = "rotograd",
        burn_in: int = 20,
        rotation_dim: int = 512,
        rotation_param: str = "expm",
    ) -> None:
        super().__init__()
        if mode not in HOMOGENIZE_MODES:
            raise ForgeryKDError(
                f"homogenize mode={mode!r} is unknown; use one of {', '.join(HOMOGENIZE_MODES)}"
            )
        if num_tasks < 1:
            raise ForgeryKDError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks, self.channels, self.mode, self.burn_in = num_tasks, channels, mode, burn_in
        self.rotation_dim = min(channels, rotation_dim)
        self.rotations = Rotations(num_tasks, self.rotation_dim, rotation_param) if self.rotating else None
        self.grad_scale = 1.0
        # Buffers, so checkpoints (accelerate save_state) restore them and resume is exact.
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))
        self.register_buffer("reference_norms", torch.ones(num_tasks))
        self.task_grads: list[Tensor] = []
        self.rotated_grads: list[Tensor] = []
        self.reference_grad: Tensor | None = None
        self._stats: dict[str, float] = {}

    @property
    def rotating(self) -> bool:
        return self.mode in _ROTATING

    def split(self, h: Tensor) -> list[Tensor]:
        """``num_tasks`` views of ``h`` ``[B, C, *]`` (rotated copies in rotating modes)."""
        if h.shape[1] != self.channels:
            raise ForgeryKDError(
                f"GradientHomogenizer(channels={self.channels}) got a map with {h.shape[1]} channels"
            )
        if not (self.training and torch.is_grad_enabled() and h.requires_grad):
            if self.rotating:
                with torch.no_grad():
                    rotations = self.rotations()
                return [rotate(h, rotations[k]) for k in range(self.num_tasks)]
            return [h] * self.num_tasks
        rotations = self.rotations() if self.rotating else h.new_zeros(0)
        return list(_Split.apply(self, h, rotations))

    # -- backward ---------------------------------------------------------------------------------------

    def _backward(self, grads: list[Tensor | None], rotations: Tensor) -> tuple[Tensor, Tensor | None]:
        scale = float(self.grad_scale)
        like = next(g for g in grads if g is not None)
        dtype = torch.promote_types(like.dtype, torch.float32)
        rotated = [(g if g is not None else torch.zeros_like(like)).to(dtype) / scale for g in grads]
        if self.rotating:
            rot = rotations.detach().to(dtype)
            task = [rotate(g, rot[k].T) for k, g in enumerate(rotated)]
        else:
            task = rotated
        norms = torch.stack([g.norm() for g in task]).clamp_min(_EPS)
        combined = self._combine(task, norms)
        self.task_grads = [g.detach() for g in task]
        self.rotated_grads = [g.detach() for g in rotated]
        self._record_stats(task, norms)
        grad_rot = None
        if self.rotating:
            mean = sum(task) / len(task)
            mean_norm = mean.norm()
            self.reference_grad = (
                sum(g * (mean_norm / n) for g, n in zip(task, norms, strict=True)) / len(task)
            ).detach()
            grad_rot = self._rotation_grad(rot).to(rotations.dtype) * scale
        return (combined * scale).to(like.dtype), grad_rot

    def _combine(self, g: list[Tensor], norms: Tensor) -> Tensor:
        if self.mode in ("none", "rotate_only"):
            return sum(g)
        if self.mode == "norm_balance":
            return sum(gk * (norms.mean() / n) for gk, n in zip(g, norms, strict=True))
        if self.mode in ("rotograd_scale", "rotograd"):
            if int(self.counter) in (0, self.burn_in):
                self.reference_norms.copy_(norms.detach())
            self.counter += 1
            ratios = norms / self.reference_norms
            alphas = ratios / ratios.sum().clamp_min(_EPS)
            magnitude = (alphas * norms).sum()
            return sum(gk * (magnitude / n) for gk, n in zip(g, norms, strict=True))
        # pcgrad
        out = []
        for i, gi in enumerate(g):
            gi = gi.clone()
            for j, gj in enumerate(g):
                dot = (gi * gj).sum()
                if i != j and dot < 0:
                    gi = gi - dot / gj.pow(2).sum().clamp_min(_EPS) * gj
            out.append(gi)
        return sum(out)

    def _rotation_grad(self, rot: Tensor) -> Tensor:
        """``∂/∂R_k`` of ``mean_b ‖R_k ḡ_b − g̃_{k,b}‖²`` over the rotated channels, ``[K, d, d]``."""
        d, batch = self.rotation_dim, self.reference_grad.shape[0]
        ref = self.reference_grad[:, :d]
        out = []
        for k in range(self.num_tasks):
            residual = rotate(ref, rot[k]) - self.rotated_grads[k][:, :d]
            out.append(torch.einsum("bi...,bj...->ij", residual, ref) * (2.0 / batch))
        return torch.stack(out)

    def rotation_loss(self) -> Tensor:
        """``Σ_k mean_b ‖R_k ḡ_b − g̃_{k,b}‖²`` from the last backward pass, differentiable in the rotations.

        Its gradient is what the backward pass already gave the rotation parameters (times ``grad_scale``).
        """
        if not self.rotating or self.reference_grad is None:
            raise ForgeryKDError(
                f"rotation_loss() needs a rotating mode and one backward pass (mode={self.mode!r})"
            )
        d, rotations = self.rotation_dim, self.rotations()
        ref = self.reference_grad[:, :d]
        total = ref.new_zeros(())
        for k in range(self.num_tasks):
            residual = rotate(ref, rotations[k]) - self.rotated_grads[k][:, :d]
            total = total + residual.pow(2).flatten(1).sum(1).mean()
        return total

    def _record_stats(self, g: list[Tensor], norms: Tensor) -> None:
        stats = {f"grad_norm_{k}": float(n) for k, n in enumerate(norms)}
        if len(g) >= 2:
            cos = (g[0] * g[1]).sum() / (norms[0] * norms[1])
            stats["grad_cos_01"] = float(cos)
            stats["grad_norm_ratio_01"] = float(norms[0] / norms[1])
        if self.rotating:
            with torch.no_grad():
                r = self.rotations().float()
                eye = torch.eye(self.rotation_dim, device=r.device)
                stats["rotation_orthogonality_error"] = float((r.transpose(1, 2) @ r - eye).abs().max())
        self._stats = stats

    def stats(self) -> dict[str, float]:
        """Diagnostics of the last backward: per-task gradient norms, ``cos(g_0, g_1)``, ``‖g_0‖/‖g_1‖``."""
        return dict(self._stats)
