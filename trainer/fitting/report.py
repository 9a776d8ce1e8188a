"""The training report a person reads next to a bundle: ``report.json`` and two plots.

* ``scores.png``: histograms of genuine scores (a probe against its own person's row)
  and impostor scores (its best row among the other people: a stranger's best match),
  with the threshold; below, the same for probe-to-probe pairs.
* ``roc.png``: true-accept rate against false-accept rate (log scale) for the
  prototype baseline and the cosine head, each with its calibrated threshold marked.

Plots are drawn with Matplotlib's Agg canvas on a ``Figure`` of their own (no pyplot
state), so writing a report is safe in any thread and needs no display.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from facecore.files import fsync_path
from trainer.evaluation.calibrate import roc_curve
from trainer.fitting.selection import FITTED_ROW_SAMPLES, Candidate, Selection

__all__ = ["REPORT_FILES", "REPORT_JSON", "ReportContext", "report_data", "write_report"]

REPORT_JSON = "report.json"
SCORES_PNG = "scores.png"
ROC_PNG = "roc.png"
REPORT_FILES = (REPORT_JSON, SCORES_PNG, ROC_PNG)


@dataclass(frozen=True)
class ReportContext:
    """What the report says beside the selection's own figures."""

    version: int
    created: str  # ISO 8601, UTC
    store_revision: int
    backbone_name: str
    backbone_sha256: str
    target_far: float
    people: tuple[tuple[str, int], ...]  # (display name, samples) per head row
    people_without_samples: int
    embedded_this_run: int  # samples embedded now rather than read from the cache
    augmented_copies: int
    export_max_abs_diff: float  # exported head (numpy, from the bundle) vs torch head


def report_data(selection: Selection | None, context: ReportContext) -> dict[str, object]:
    """The content of ``report.json`` (NaN written as null); ``selection`` is None when
    nobody with a sample is enrolled."""
    counts: dict[str, int] = {
        "people": len(context.people),
        "people_without_samples": context.people_without_samples,
        "augmented_copies_per_sample": context.augmented_copies,
        "embedded_this_run": context.embedded_this_run,
    }
    data: dict[str, object] = {
        "version": context.version,
        "created": context.created,
        "store_revision": context.store_revision,
        "backbone": {"name": context.backbone_name, "sha256": context.backbone_sha256},
        "target_far": context.target_far,
        "people": [
            {"name": name, "samples": count, "row": _row_kind(selection, count)}
            for name, count in context.people
        ],
        "counts": counts,
        "export_check": {"max_abs_diff": context.export_max_abs_diff},
    }
    if selection is None:
        data["published"] = {"head": "prototypes", "reason": "nobody with a sample is enrolled"}
    else:
        data.update(_selection_data(selection))
        counts.update(_selection_counts(selection))
    cleaned = _finite(data)
    assert isinstance(cleaned, dict)
    return cleaned


def _row_kind(selection: Selection | None, samples: int) -> str:
    """"fitted", or "prototype" (the mean of the person's samples): a fitted head
    leaves the rows of people with one sample as they are (`trainer.fitting.selection`)."""
    fitted = selection is not None and selection.kind == "cosine" and samples >= FITTED_ROW_SAMPLES
    return "fitted" if fitted else "prototype"


def _selection_data(selection: Selection) -> dict[str, object]:
    published = selection.cosine if selection.kind == "cosine" else selection.baseline
    assert published is not None
    fit = selection.fit
    return {
        "published": {
            "head": selection.kind,
            "threshold": selection.threshold,
            "reason": selection.reason,
            "calibration": {
                "empirical_threshold": published.calibration.empirical,
                "gaussian_threshold": published.calibration.gaussian,
                "impostor_scores": published.calibration.impostor_count,
                "fallback": published.calibration.fallback,
            },
        },
        "evaluated_on": "held-out samples" if selection.cosine is not None else "all samples",
        "candidates": {
            "prototypes": selection.baseline.figures(),
            "cosine": selection.cosine.figures() if selection.cosine is not None else None,
        },
        "fit": None if fit is None else {
            "epochs": fit.epochs,
            "best_epoch": fit.best_epoch,
            "best_held_loss": fit.best_held_loss,
            "history": [{"train_loss": t, "held_loss": h} for t, h in fit.history],
        },
    }


def _selection_counts(selection: Selection) -> dict[str, int]:
    split = selection.split
    return {
        "single_sample_people": split.single_sample_people,
        "samples": len(split.train) + len(split.held_out),
        "train_samples": len(split.train),
        "held_out_samples": len(split.held_out),
        "pair_genuine": len(selection.pairs.genuine),
        "pair_impostor": len(selection.pairs.impostor),
    }


def write_report(directory: Path, selection: Selection | None, context: ReportContext) -> None:
    """Write ``report.json``, ``scores.png`` and ``roc.png`` into ``directory`` and fsync
    them (the directory is a bundle being built; publishing makes them visible). With
    nobody enrolled there is nothing to plot and only ``report.json`` is written."""
    text = json.dumps(report_data(selection, context), ensure_ascii=False, indent=2)
    (directory / REPORT_JSON).write_text(text + "\n", encoding="utf-8")
    written = [REPORT_JSON]
    if selection is not None:
        _plot_scores(directory / SCORES_PNG, selection)
        _plot_roc(directory / ROC_PNG, selection)
        written += [SCORES_PNG, ROC_PNG]
    for name in written:
        (directory / name).chmod(0o600)
        fsync_path(directory / name)


def _plot_scores(path: Path, selection: Selection) -> None:
    published = selection.cosine if selection.kind == "cosine" else selection.baseline
    assert published is not None
    figure = Figure(figsize=(8, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1)
    _histograms(
        top, published.scores.genuine, published.scores.impostor, selection.threshold,
        f"{selection.kind} head: probe vs rows",
        ("own person's row", "best other person's row (unknown)"),
    )
    _histograms(
        bottom, selection.pairs.genuine, selection.pairs.impostor, selection.threshold,
        "probe vs probe", ("same person", "different people"),
    )
    FigureCanvasAgg(figure).print_png(str(path))


def _histograms(
    axes: Axes,
    genuine: NDArray[np.float32],
    impostor: NDArray[np.float32],
    threshold: float,
    title: str,
    names: tuple[str, str],
) -> None:
    # from a little below the lowest score (or the threshold) to 1, in steps of 0.05
    lowest = min([float(np.min(s)) for s in (genuine, impostor) if len(s)] + [threshold, 0.9])
    bins = np.linspace(max(np.floor(lowest * 20 - 1) / 20, -1.0), 1.0, 61)
    for scores, name, colour in ((genuine, names[0], "tab:green"), (impostor, names[1], "tab:red")):
        if len(scores):
            axes.hist(
                scores, bins=bins, alpha=0.6, color=colour,
                label=f"{name} (n={len(scores)})", density=True,
            )
    if math.isfinite(threshold):
        axes.axvline(threshold, color="black", linestyle="--",
                     label=f"threshold {threshold:.3f}")
    axes.set_title(title)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.legend(loc="upper left", fontsize="small")


def _plot_roc(path: Path, selection: Selection) -> None:
    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.subplots()
    floor, bottom = 1.0, 1.0
    for candidate, colour in ((selection.baseline, "tab:blue"), (selection.cosine, "tab:orange")):
        if candidate is None or len(candidate.scores.impostor) == 0:
            continue
        floor = min(floor, 0.5 / len(candidate.scores.impostor))
        bottom = min(bottom, _roc_line(axes, candidate, colour,
                                       published=candidate.kind == selection.kind))
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(max(np.floor(bottom * 20 - 1) / 20, 0.0), 1.005)
    axes.set_xlabel("false-accept rate (unknown face named; 0 drawn at the left edge)")
    axes.set_ylabel("true-accept rate (own row at or above the threshold)")
    axes.set_title("ROC on the probes, open set")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    FigureCanvasAgg(figure).print_png(str(path))


def _roc_line(axes: Axes, candidate: Candidate, colour: str, *, published: bool) -> float:
    """Draw one ROC and its threshold; returns the true-accept rate worth showing at
    the bottom of the plot (at no false accept, or at the threshold if lower)."""
    scores = candidate.scores
    far, tar, _ = roc_curve(scores.genuine, scores.impostor)
    floor = 0.5 / len(scores.impostor)
    label = f"{candidate.kind}{' (published)' if published else ''}"
    axes.step(np.maximum(far, floor), tar, where="post", color=colour, label=label)
    t = candidate.threshold
    point = (max(scores.false_accept_rate(t), floor), float(np.mean(scores.genuine >= t)))
    axes.plot(*point, marker="o", markersize=9, color=colour, markeredgecolor="black",
              label=f"{candidate.kind} threshold {t:.3f}: accuracy {candidate.accuracy:.3f}")
    return min(point[1], float(tar[far == 0].max()))


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
