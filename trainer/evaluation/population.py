"""Measuring a model's population calibration (`facecore.calibration`) from labelled
face sets: every pair of different people's images is an impostor score, every pair
of one person's images a genuine one.

Pure functions over embeddings and scores, plus `data_sha256` and `source_commit`,
which name the data and the code the figures came from.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.calibration import MIN_EXCEEDANCES, TAIL_EXCEEDANCES, ImpostorTail
from facecore.download import sha256_file
from trainer.evaluation.calibrate import calibrate_threshold

__all__ = ["FAR_GRID", "data_sha256", "impostor_tail", "source_commit"]

# the false-accept rates at which the empirical curve is kept
MIN_IMPOSTORS = 10 * TAIL_EXCEEDANCES  # so that the fitted tail is the top tenth at most
FAR_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def impostor_tail(
    dataset: str,
    embeddings: NDArray[np.float32],
    labels: Sequence[str],
    data_hash: str,
) -> ImpostorTail:
    """The impostor tail of unit ``embeddings`` [M, D] of images of the people
    ``labels`` [M] (all pairs of images, each unordered pair once)."""
    owners = np.unique(np.asarray(labels), return_inverse=True)[1]
    if len(embeddings) != len(owners):
        raise ValueError(f"{len(embeddings)} embeddings but {len(owners)} labels")
    first, second = np.triu_indices(len(embeddings), k=1)
    scores = np.einsum("ij,ij->i", embeddings[first], embeddings[second])
    same = owners[first] == owners[second]
    impostor = np.sort(scores[~same].astype(np.float64))[::-1]
    if len(impostor) < MIN_IMPOSTORS:
        raise ValueError(
            f"{dataset}: {len(impostor)} impostor pairs; a calibration needs at least "
            f"{MIN_IMPOSTORS} (more people or images)"
        )
    count = len(impostor)
    curve = tuple(
        (far, calibrate_threshold(impostor, far)[0])
        for far in FAR_GRID
        if far * count >= MIN_EXCEEDANCES
    )
    start = float(impostor[TAIL_EXCEEDANCES - 1])
    excess = impostor[: TAIL_EXCEEDANCES - 1] - start
    genuine = scores[same]
    return ImpostorTail(
        dataset=dataset,
        images=len(embeddings),
        people=int(owners.max()) + 1,
        data_sha256=data_hash,
        impostor_count=count,
        genuine_count=int(same.sum()),
        genuine_median=float(np.median(genuine)) if len(genuine) else float("nan"),
        curve=curve,
        tail_far=TAIL_EXCEEDANCES / count,
        tail_start=start,
        tail_scale=float(max(excess.mean(), 1e-6)),
    )


def data_sha256(root: Path, images: Sequence[Path]) -> str:
    """One sha256 for a labelled set: over its images' paths (relative to ``root``)
    and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(images):
        digest.update(f"{path.relative_to(root).as_posix()} {sha256_file(path)}\n".encode())
    return digest.hexdigest()


def source_commit() -> str:
    """The git commit of the facestream source this runs from ("+dirty" when it has
    uncommitted changes), or "unknown" outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
