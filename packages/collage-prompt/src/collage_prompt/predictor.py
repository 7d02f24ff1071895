"""Graph predictors of collage accuracy: CollageGCN (cells as nodes, with positions) and OfficialLikeGCN.

Both take image features ``feats`` (B, K, D) in canonical image order and arrangements ``perms`` (B, K) with
``perms[b, c]`` the image in cell c. Training runs on :class:`difflab_core.train.Trainer`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import grid_adjacency, normalized_adjacency
from difflab_core.train import TrainConfig, Trainer, load_weights, seeded_loader

__all__ = [
    "CollageGCN",
    "CollageSample",
    "OfficialLikeGCN",
    "PredictorConfig",
    "load_predictor",
    "score",
    "train_predictor",
]


@dataclass
class CollageSample:
    """One queried collage: image features (K, D) in image order, arrangement (K,), per-cell correctness (K,)
    in cell order (None when only the collage accuracy is known) and the collage accuracy."""

    feats: np.ndarray
    perm: np.ndarray
    cell_correct: np.ndarray | None
    accuracy: float
    set_id: int = 0


def _gather_cells(x: Tensor, perms: Tensor) -> Tensor:
    """x (B, K, D), perms (B, K) -> x[b, perms[b, c]] (B, K, D)."""
    return torch.gather(x, 1, perms.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _unit(x: Tensor) -> Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


class CollageGCN(nn.Module):
    """Dense GCN over the cells of a ``rows`` x ``cols`` grid; per-cell P(correct), collage accuracy = mean.

    Node c: [W_f f_{perm[c]} || cell embedding || (row, col) / (R-1, C-1) || corner/edge/interior one-hot ||
    max and mean cosine similarity to the images in neighbouring cells].
    """

    symmetry_invariant = False

    def __init__(
        self,
        feat_dim: int,
        rows: int,
        cols: int,
        hidden: int = 128,
        proj: int = 64,
        pos_dim: int = 16,
        dropout: float = 0.1,
        neighbourhood: int = 4,
    ) -> None:
        super().__init__()
        self.rows, self.cols, self.k = rows, cols, rows * cols
        self.proj = nn.Linear(feat_dim, proj)
        self.cell_embedding = nn.Embedding(self.k, pos_dim)
        r, c = np.divmod(np.arange(self.k), cols)
        coords = np.stack([r / max(1, rows - 1), c / max(1, cols - 1)], 1)
        border = (r == 0).astype(int) + (r == rows - 1) + (c == 0) + (c == cols - 1)
        kind = np.eye(3)[np.where(border >= 2, 0, np.where(border == 1, 1, 2))]
        self.register_buffer(
            "cell_static", torch.tensor(np.concatenate([coords, kind], 1), dtype=torch.float32)
        )
        self.register_buffer("a_hat", torch.from_numpy(normalized_adjacency(rows, cols, neighbourhood)))
        self.register_buffer("adj", torch.from_numpy(grid_adjacency(rows, cols, neighbourhood)))
        d_in = proj + pos_dim + 5 + 2
        self.gcn1 = nn.Linear(d_in, hidden)
        self.gcn2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)

    def cell_logits(self, feats: Tensor, perms: Tensor) -> Tensor:
        """Per-cell logits (B, K)."""
        b = perms.shape[0]
        if feats.shape[0] == 1 and b > 1:
            feats = feats.expand(b, -1, -1)
        cells = _gather_cells(feats, perms)
        u = _unit(cells)
        sim = u @ u.transpose(1, 2)
        adj = self.adj.unsqueeze(0)
        deg = self.adj.sum(1).clamp(min=1)
        sim_max = sim.masked_fill(adj == 0, -2.0).amax(-1)
        sim_mean = (sim * adj).sum(-1) / deg
        pos = torch.cat([self.cell_embedding.weight, self.cell_static], 1).unsqueeze(0).expand(b, -1, -1)
        h = torch.cat([self.proj(cells), pos, sim_max.unsqueeze(-1), sim_mean.unsqueeze(-1)], -1)
        h = self.dropout(torch.relu(self.a_hat @ self.gcn1(h)))
        h = torch.relu(self.a_hat @ self.gcn2(h))
        return self.head(h).squeeze(-1)

    def forward(self, feats: Tensor, perms: Tensor) -> Tensor:
        """Predicted collage accuracy (B,)."""
        return torch.sigmoid(self.cell_logits(feats, perms)).mean(-1)

    @torch.no_grad()
    def score_set(self, feats: Tensor, perms: Tensor) -> Tensor:
        """``forward`` for many arrangements (N, K) of one image set (K, D), in eval mode, without redoing
        per-image and per-cell work: the first layer is split into an image term, a cell term and the
        neighbour-similarity term, so per arrangement only gathers and the two Â products remain."""
        proj_dim = self.proj.out_features
        pos_dim = self.cell_embedding.embedding_dim + self.cell_static.shape[1]
        w = self.gcn1.weight
        image_term = self.proj(feats) @ w[:, :proj_dim].T
        pos = torch.cat([self.cell_embedding.weight, self.cell_static], 1)
        cell_term = pos @ w[:, proj_dim : proj_dim + pos_dim].T + self.gcn1.bias
        w_max, w_mean = w[:, -2], w[:, -1]
        u = _unit(feats)
        sim = u @ u.T
        nbr = [torch.nonzero(row).squeeze(1) for row in self.adj]
        width = max(len(n) for n in nbr)
        nbr_idx = torch.stack([torch.cat([n, n[:1].expand(width - len(n))]) for n in nbr])
        valid = torch.stack([torch.arange(width) < len(n) for n in nbr]).to(feats.device)
        p = perms.long()
        s = sim[p.unsqueeze(-1), p[:, nbr_idx]]
        s_max = s.masked_fill(~valid, -2.0).amax(-1)
        s_mean = (s * valid).sum(-1) / valid.sum(-1)
        x = image_term[p] + cell_term + s_max.unsqueeze(-1) * w_max + s_mean.unsqueeze(-1) * w_mean
        h = torch.relu(torch.einsum("ck,nkh->nch", self.a_hat, x))
        h = torch.relu(torch.einsum("ck,nkh->nch", self.a_hat, self.gcn2(h)))
        return torch.sigmoid(self.head(h).squeeze(-1)).mean(-1)


class OfficialLikeGCN(nn.Module):
    """The official formulation without HGP-SL pooling: image nodes in canonical order, edges between images
    in neighbouring cells, 3 GCN layers with summed [max || mean] readouts, MLP 256-128-64-1 on z-scored
    accuracy. Blind to cell positions, hence invariant to the grid symmetries."""

    symmetry_invariant = True

    def __init__(
        self,
        feat_dim: int,
        rows: int,
        cols: int,
        hidden: int = 128,
        dropout: float = 0.1,
        neighbourhood: int = 4,
    ) -> None:
        super().__init__()
        self.rows, self.cols, self.k = rows, cols, rows * cols
        self.register_buffer("adj", torch.from_numpy(grid_adjacency(rows, cols, neighbourhood)))
        self.layers = nn.ModuleList(
            [nn.Linear(feat_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)]
        )
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def z_score(self, feats: Tensor, perms: Tensor) -> Tensor:
        """The network's z-scored output (B,)."""
        b, k = perms.shape
        if feats.shape[0] == 1 and b > 1:
            feats = feats.expand(b, -1, -1)
        where = torch.argsort(perms.long(), dim=1)
        a = self.adj[where.unsqueeze(-1), where.unsqueeze(1)] + torch.eye(k, device=feats.device)
        d = a.sum(-1).rsqrt()
        a_hat = a * d.unsqueeze(-1) * d.unsqueeze(-2)
        h, readout = feats, 0
        for layer in self.layers:
            h = torch.relu(a_hat @ layer(h))
            readout = readout + torch.cat([h.amax(1), h.mean(1)], -1)
        return self.mlp(readout).squeeze(-1)

    def forward(self, feats: Tensor, perms: Tensor) -> Tensor:
        """Predicted collage accuracy (B,)."""
        return self.z_score(feats, perms) * self.target_std + self.target_mean


@dataclass
class PredictorConfig:
    """Training settings (spec defaults: AdamW lr 1e-3, wd 0.01, batch 256, 60 epochs)."""

    kind: str = "collage_gcn"
    hidden: int = 128
    dropout: float = 0.1
    neighbourhood: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    epochs: int = 60
    seed: int = 0
    progress: bool = False


class _Samples(Dataset):
    def __init__(self, samples: list[CollageSample]) -> None:
        self.feats = torch.from_numpy(np.stack([s.feats for s in samples]).astype(np.float32))
        self.perms = torch.from_numpy(np.stack([s.perm for s in samples]).astype(np.int64))
        k = self.perms.shape[1]
        self.cells = torch.from_numpy(
            np.stack(
                [s.cell_correct if s.cell_correct is not None else np.full(k, np.nan) for s in samples]
            ).astype(np.float32)
        )
        self.acc = torch.tensor([s.accuracy for s in samples], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.acc)

    def __getitem__(self, i: int):
        return self.feats[i], self.perms[i], self.cells[i], self.acc[i]


def _build(cfg: PredictorConfig, feat_dim: int, rows: int, cols: int) -> nn.Module:
    if cfg.kind == "collage_gcn":
        return CollageGCN(
            feat_dim, rows, cols, hidden=cfg.hidden, dropout=cfg.dropout, neighbourhood=cfg.neighbourhood
        )
    if cfg.kind == "official_like":
        return OfficialLikeGCN(
            feat_dim, rows, cols, hidden=cfg.hidden, dropout=cfg.dropout, neighbourhood=cfg.neighbourhood
        )
    raise CollagePromptError(f"PredictorConfig.kind={cfg.kind!r}: use 'collage_gcn' or 'official_like'")


def train_predictor(
    samples: list[CollageSample],
    grid: tuple[int, int],
    cfg: PredictorConfig | None = None,
    out_dir: str | Path = "predictor",
) -> nn.Module:
    """Train a predictor on queried collages; resumes from ``out_dir`` checkpoints. Returns the model (eval mode).

    CollageGCN: BCE on per-cell correctness plus MSE on the collage mean (MSE only where cells are unknown).
    OfficialLikeGCN: MSE on z-scored collage accuracy.
    """
    cfg = cfg or PredictorConfig()
    if not samples:
        raise CollagePromptError("train_predictor: no samples")
    rows, cols = grid
    k = rows * cols
    bad = [i for i, s in enumerate(samples) if s.feats.shape[0] != k or len(s.perm) != k]
    if bad:
        raise CollagePromptError(
            f"train_predictor: samples {bad[:5]} do not have {k} cells for grid {rows}x{cols}"
        )
    torch.manual_seed(cfg.seed)
    data = _Samples(samples)
    model = _build(cfg, data.feats.shape[-1], rows, cols)
    if isinstance(model, OfficialLikeGCN):
        model.target_mean.fill_(float(data.acc.mean()))
        model.target_std.fill_(float(data.acc.std().clamp(min=1e-3)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictor_config.json").write_text(
        json.dumps({**asdict(cfg), "feat_dim": int(data.feats.shape[-1]), "rows": rows, "cols": cols}),
        encoding="utf-8",
    )
    bce = nn.BCEWithLogitsLoss()

    def loss_fn(m: nn.Module, batch, step: int) -> Tensor:
        feats, perms, cells, acc = batch
        if isinstance(m, OfficialLikeGCN):
            return nn.functional.mse_loss(m.z_score(feats, perms), (acc - m.target_mean) / m.target_std)
        logits = m.cell_logits(feats, perms)
        loss = nn.functional.mse_loss(torch.sigmoid(logits).mean(-1), acc)
        known = ~torch.isnan(cells)
        if known.any():
            loss = loss + bce(logits[known], cells[known])
        return loss

    steps = max(1, math.ceil(len(data) / cfg.batch_size) * cfg.epochs)
    tcfg = TrainConfig(
        max_steps=steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        progress=cfg.progress,
        log_every=max(1, steps // 10),
        checkpoint_every=max(1, steps // 2),
    )
    Trainer(
        model, loss_fn, seeded_loader(data, min(cfg.batch_size, len(data)), cfg.seed), tcfg, out_dir
    ).fit()
    return model.cpu().eval()


def load_predictor(out_dir: str | Path) -> nn.Module:
    """A predictor trained by :func:`train_predictor` from its folder (safetensors weights)."""
    out_dir = Path(out_dir)
    cfg_path = out_dir / "predictor_config.json"
    if not cfg_path.is_file() or not (out_dir / "model.safetensors").is_file():
        raise CollagePromptError(
            f"{out_dir}: no trained predictor (predictor_config.json and model.safetensors)"
        )
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = PredictorConfig(**{k: v for k, v in meta.items() if k in PredictorConfig.__dataclass_fields__})
    model = _build(cfg, meta["feat_dim"], meta["rows"], meta["cols"])
    load_weights(model, out_dir / "model.safetensors")
    return model.eval()


@torch.no_grad()
def score(model: nn.Module, feats: np.ndarray, perms: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """Predicted collage accuracy (N,) of arrangements ``perms`` (N, K) of one image set ``feats`` (K, D)."""
    model.eval()
    f = torch.as_tensor(np.asarray(feats, dtype=np.float32))
    p = np.asarray(perms)
    fn = model.score_set if isinstance(model, CollageGCN) else lambda x, q: model(x.unsqueeze(0), q)
    out = [
        fn(f, torch.from_numpy(p[i : i + chunk].astype(np.int64))).numpy() for i in range(0, len(p), chunk)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
