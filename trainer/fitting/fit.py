"""The cosine head, in PyTorch: one learned unit vector per person, fitted with a margin.

A cosine classifier scores an embedding ``x`` against person ``k`` as
``cos(x, w_k)``; with unit rows that is ``x @ W.T``, the very product the server
computes on a bundle's ``head.npz``. So the fitted head exports as a [K, D] matrix,
with no new network to run. It starts from the prototypes (the baseline) and is
trained with the CosFace loss: cross-entropy over ``scale * (cos - margin * onehot)``,
which pushes each person's embeddings at least ``margin`` closer to their own row
than to anyone else's. Training runs on embeddings of augmented chips (the backbone
stays frozen), so an epoch takes milliseconds; the held-out loss stops it early.

The server's rule is open-set: a face is named only when its best row scores at
least the threshold. Plain CosFace only orders the rows, and lets them drift away
from where the embeddings lie (dlib's unit embeddings share a large common
component, so every score is high): own-row scores then fall to where strangers
score too. With ``reject`` set, the loss gets one more logit, fixed at
``scale * reject`` (an "unknown" class that cannot move): each face must beat that
level, not only the other people, so the head is trained for the rule it serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

__all__ = ["CosineHead", "FitConfig", "FitResult", "fit_cosine_head", "margin_loss"]


@dataclass(frozen=True)
class FitConfig:
    margin: float = 0.2  # CosFace additive cosine margin
    scale: float = 30.0  # logit scale (inverse temperature)
    learning_rate: float = 0.01  # Adam
    max_epochs: int = 150
    patience: int = 10  # epochs without a better held-out loss before stopping
    batch_size: int = 256
    held_out_fraction: float = 0.3  # of each person's samples (see trainer.fitting.selection)
    seed: int = 0


class CosineHead(nn.Module):
    """``forward(x [N, D]) -> cos [N, K]``: cosine of each embedding with each row."""

    def __init__(self, weights: NDArray[np.float32]) -> None:
        super().__init__()
        if weights.ndim != 2:
            raise ValueError(f"head weights must be [K, D], got {weights.shape}")
        self.weight = nn.Parameter(torch.tensor(np.asarray(weights, np.float32)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T

    def unit_weights(self) -> NDArray[np.float32]:
        """The rows as exported: [K, D] float32, each of unit length."""
        with torch.no_grad():
            return F.normalize(self.weight, dim=1).numpy().astype(np.float32)

    def scores(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """``forward`` on numpy embeddings, without gradients: [N, K] float32."""
        with torch.no_grad():
            return self(torch.from_numpy(np.asarray(embeddings, np.float32))).numpy()


def margin_loss(
    cosines: torch.Tensor,
    targets: torch.Tensor,
    margin: float,
    scale: float,
    reject: float | None = None,
) -> torch.Tensor:
    """CosFace: mean cross-entropy of ``scale * (cos - margin * onehot(target))``, with
    a constant "unknown" logit ``scale * reject`` appended when ``reject`` is given."""
    onehot = F.one_hot(targets, cosines.shape[1]).to(cosines.dtype)
    logits = scale * (cosines - margin * onehot)
    if reject is not None:
        level = torch.full((len(cosines), 1), scale * reject, dtype=logits.dtype)
        logits = torch.cat([logits, level], dim=1)
    return F.cross_entropy(logits, targets)


@dataclass(frozen=True)
class FitResult:
    head: CosineHead  # the best weights seen (lowest held-out loss), or the last epoch's
    epochs: int  # epochs run
    best_epoch: int  # epoch of ``head``; 0 = the initial weights were never bettered
    best_held_loss: float  # nan when fitted without a held-out set
    history: tuple[tuple[float, float], ...]  # (train loss, held-out loss) per epoch


def fit_cosine_head(
    embeddings: NDArray[np.float32],
    labels: NDArray[np.intp],
    initial: NDArray[np.float32],
    config: FitConfig,
    *,
    reject: float | None = None,
    held_out: tuple[NDArray[np.float32], NDArray[np.intp]] | None = None,
    epochs: int | None = None,
    fixed_rows: NDArray[np.bool_] | None = None,
    progress: bool = True,
) -> FitResult:
    """Fit a ``CosineHead`` starting at ``initial`` [K, D] on ``embeddings`` [N, D] of
    people ``labels`` [N] (indices into the rows), with the "unknown" level
    ``reject`` (a cosine; see the module docstring) when given.

    With ``held_out`` (embeddings, labels), training stops once the held-out loss has
    not improved for ``config.patience`` epochs and the best epoch's weights are
    kept; without, it runs exactly ``epochs`` epochs (default ``config.max_epochs``),
    as when re-fitting on all samples for the epoch count a held-out run found.
    ``fixed_rows`` [K] marks rows that stay as ``initial`` has them (their people
    still count as the other rows' negatives)."""
    if len(embeddings) != len(labels) or len(embeddings) == 0:
        raise ValueError(
            f"need as many labels as embeddings (> 0): {len(embeddings)}, {len(labels)}"
        )
    head = CosineHead(initial)
    if fixed_rows is not None and fixed_rows.any():
        # a zero gradient from the first step on leaves Adam's update at zero too
        moving = torch.from_numpy(~np.asarray(fixed_rows, bool)).to(torch.float32)[:, None]
        head.weight.register_hook(lambda grad: grad * moving)
    x = torch.from_numpy(np.asarray(embeddings, np.float32))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    held = None
    if held_out is not None and len(held_out[1]):
        held = (
            torch.from_numpy(np.asarray(held_out[0], np.float32)),
            torch.from_numpy(np.asarray(held_out[1], np.int64)),
        )
    loss = _Loss(config.margin, config.scale, reject)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    total = config.max_epochs if epochs is None else epochs

    best_loss = _held_loss(head, held, loss) if held is not None else math.nan
    best_state, best_epoch, stale = head.weight.detach().clone(), 0, 0
    history: list[tuple[float, float]] = []
    bar = tqdm(range(1, total + 1), desc="fitting head", unit="epoch", leave=False,
               disable=None if progress else True)
    for epoch in bar:
        train_loss = _train_epoch(head, optimizer, x, y, loss, config.batch_size, generator)
        held_loss = _held_loss(head, held, loss) if held is not None else math.nan
        history.append((train_loss, held_loss))
        bar.set_postfix(train=f"{train_loss:.3f}", held=f"{held_loss:.3f}")
        if held is None:
            best_state, best_epoch = head.weight.detach().clone(), epoch
            continue
        if held_loss < best_loss - 1e-6:
            best_loss, best_epoch, stale = held_loss, epoch, 0
            best_state = head.weight.detach().clone()
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    with torch.no_grad():
        head.weight.copy_(best_state)
    return FitResult(head, len(history), best_epoch, best_loss, tuple(history))


@dataclass(frozen=True)
class _Loss:
    margin: float
    scale: float
    reject: float | None

    def __call__(self, cosines: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return margin_loss(cosines, targets, self.margin, self.scale, self.reject)


def _train_epoch(
    head: CosineHead,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_of: _Loss,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    head.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = order[start : start + batch_size]
        loss = loss_of(head(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    return total / len(x)


def _held_loss(head: CosineHead, held: tuple[torch.Tensor, torch.Tensor], loss_of: _Loss) -> float:
    head.eval()
    with torch.no_grad():
        return float(loss_of(head(held[0]), held[1]))
