"""Annotators: draw boxes, names and overlays on a frame.

Each annotator keeps no state between calls: ``annotate(frame, ...) -> frame`` draws
on ``frame`` in place and returns it. `annotate_frame` copies the frame first and
applies them all. Text is rasterised by `FontSet` into a small alpha mask and blended
into just the label's region, so a label costs a few thousand pixels, not a frame
conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from streamer.live.fonts import FontSet
from streamer.live.tracker import TrackView

__all__ = [
    "BoxAnnotator",
    "FpsAnnotator",
    "LabelAnnotator",
    "Overlay",
    "annotate_frame",
    "blend_text",
    "label_text",
]

Colour = tuple[int, int, int]  # BGR
KNOWN: Colour = (70, 190, 40)
UNKNOWN: Colour = (40, 60, 220)
TEXT: Colour = (255, 255, 255)
PANEL: Colour = (30, 30, 30)


@dataclass(frozen=True)
class Overlay:
    """Optional overlays, on top of boxes and names."""

    track_ids: bool = False
    fps: bool = False


def label_text(view: TrackView, *, track_id: bool = False) -> str:
    """``"Ada Lovelace 0.91"``, ``"unknown"``, or with ``track_id`` ``"#7 ..."``.

    An unknown face shows no number: its score is the similarity to the closest
    enrolled person, which read as "0.91 sure it is unknown". A left-to-right mark
    follows a name, so the confidence stays at the right end after a right-to-left
    (Arabic, Hebrew) name."""
    if view.name is None:
        text = "unknown"
    else:
        text = f"{view.name}\u200e {view.confidence:.2f}" if view.confidence > 0 else view.name
    return f"#{view.track_id} {text}" if track_id else text


def _colour(view: TrackView) -> Colour:
    return KNOWN if view.name is not None else UNKNOWN


def _text_size(frame: NDArray[np.uint8]) -> int:
    return max(12, round(frame.shape[0] * 0.035))


def blend_text(
    frame: NDArray[np.uint8],
    mask: NDArray[np.uint8],
    x: int,
    y: int,
    colour: Colour,
    background: Colour,
    *,
    pad: int = 2,
) -> tuple[int, int, int, int]:
    """Draw a text mask with a filled background at (x, y) (top-left, clipped to the
    frame); returns the region (x0, y0, x1, y1) that was drawn on."""
    height, width = frame.shape[:2]
    h, w = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    x0, y0 = min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))
    x1, y1 = min(x0 + w, width), min(y0 + h, height)
    if x1 <= x0 or y1 <= y0:
        return (x0, y0, x0, y0)
    region = frame[y0:y1, x0:x1]
    alpha = np.zeros((y1 - y0, x1 - x0, 1), np.uint16)
    inner = mask[: max(y1 - y0 - pad, 0), : max(x1 - x0 - pad, 0)]
    alpha[pad : pad + inner.shape[0], pad : pad + inner.shape[1], 0] = inner
    fg = np.asarray(colour, np.uint16)
    bg = np.asarray(background, np.uint16)
    region[:] = ((bg * (255 - alpha) + fg * alpha + 127) // 255).astype(np.uint8)
    return (x0, y0, x1, y1)


class BoxAnnotator:
    """A rectangle per face: green when named, red when unknown."""

    def annotate(self, frame: NDArray[np.uint8], tracks: Sequence[TrackView]) -> NDArray[np.uint8]:
        thickness = max(1, round(frame.shape[0] / 300))
        for view in tracks:
            x0, y0, x1, y1 = (round(v) for v in view.xyxy)
            cv2.rectangle(frame, (x0, y0), (x1, y1), _colour(view), thickness)
        return frame


class LabelAnnotator:
    """The name (or "unknown") and confidence above each box, in any script."""

    def __init__(self, fonts: FontSet) -> None:
        self.fonts = fonts

    def annotate(
        self, frame: NDArray[np.uint8], tracks: Sequence[TrackView], *, track_ids: bool = False
    ) -> NDArray[np.uint8]:
        size = _text_size(frame)
        for view in tracks:
            mask = self.fonts.render(label_text(view, track_id=track_ids), size)
            x0, y0 = round(view.xyxy[0]), round(view.xyxy[1])
            above = y0 - mask.shape[0] - 4
            blend_text(frame, mask, x0, above if above >= 0 else y0, TEXT, _colour(view))
        return frame


class FpsAnnotator:
    """Frames per second in the top-left corner."""

    def __init__(self, fonts: FontSet) -> None:
        self.fonts = fonts

    def annotate(self, frame: NDArray[np.uint8], fps: float) -> NDArray[np.uint8]:
        mask = self.fonts.render(f"{fps:.1f} fps", _text_size(frame))
        blend_text(frame, mask, 4, 4, TEXT, PANEL)
        return frame


def annotate_frame(
    frame: NDArray[np.uint8],
    tracks: Sequence[TrackView],
    fonts: FontSet,
    *,
    overlay: Overlay = Overlay(),
    fps: float | None = None,
) -> NDArray[np.uint8]:
    """An annotated copy of ``frame``: boxes, labels, and the overlays asked for."""
    out = frame.copy()
    BoxAnnotator().annotate(out, tracks)
    LabelAnnotator(fonts).annotate(out, tracks, track_ids=overlay.track_ids)
    if overlay.fps and fps is not None:
        FpsAnnotator(fonts).annotate(out, fps)
    return out
