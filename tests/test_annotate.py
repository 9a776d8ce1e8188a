"""Annotation: boxes, names in any script through fontconfig's fonts, overlays."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from facecore.errors import ConfigError
from streamer.live.annotate import (
    KNOWN,
    UNKNOWN,
    BoxAnnotator,
    FpsAnnotator,
    LabelAnnotator,
    Overlay,
    annotate_frame,
    label_text,
)
from streamer.live.fonts import FontSet, fontconfig_match
from streamer.live.tracker import TrackView

pytestmark = pytest.mark.skipif(shutil.which("fc-match") is None, reason="needs fontconfig")


@pytest.fixture(scope="module")
def fonts() -> FontSet:
    return FontSet()


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 120, (360, 640, 3), dtype=np.uint8)


def _view(name: str | None, box=(200.0, 150.0, 300.0, 280.0), track_id: int = 3) -> TrackView:
    return TrackView(track_id, box, name, 0.93 if name else 0.41)


def test_chinese_name_is_drawn_with_a_cjk_font_where_the_label_is(fonts: FontSet) -> None:
    cjk = fontconfig_match(":charset=738b")  # 王
    assert cjk is not None
    assert fonts.font_file("王") == cjk[0] != fonts.font_file("A")
    frame = _frame()
    out = annotate_frame(frame, [_view("王小明")], fonts)
    changed = np.any(out != frame, axis=2)
    label = changed[100:150, 195:400]  # just above the box
    assert label.sum() > 500
    ink = np.all(out[100:150, 195:400] > 200, axis=2)
    assert ink.sum() > 60  # the white strokes of the characters themselves
    assert not changed[290:, :].any() and not changed[:, 420:].any()  # nothing elsewhere
    # the same name in the primary font alone would be missing-glyph boxes
    primary = ImageFont.truetype(fonts.primary[0], 20, index=fonts.primary[1])
    tofu = np.asarray(primary.getmask("王小明"), np.uint8).reshape(
        primary.getmask("王小明").size[::-1]
    )
    drawn = fonts.render("王小明", 20)
    assert drawn.shape != tofu.shape or not np.array_equal(drawn > 0, tofu > 0)


@pytest.mark.parametrize(
    "name",
    [
        "محمد عبد الله",
        "José Ñúñez",
        "Ærøskøbing Çelik",
        "Lin-Manuel Miranda",
        "Nguyễn Thị Minh Khai",
    ],
)
def test_names_in_other_scripts_render(fonts: FontSet, name: str) -> None:
    mask = fonts.render(name, 24)
    assert mask.dtype == np.uint8 and mask.ndim == 2
    assert (mask > 128).sum() > 10 * len(name.replace(" ", ""))
    assert mask.shape[1] > 5 * len(name)


@pytest.mark.parametrize(
    "name", ["\ue000\U0010fffd", "a\x00b\x07c", "\ud800x", "😀 Ana", "", "   "]
)
def test_missing_glyphs_never_crash(fonts: FontSet, name: str) -> None:
    mask = fonts.render(name, 18)
    assert mask.ndim == 2 and mask.shape[0] > 0
    out = annotate_frame(_frame(), [_view(name)], fonts)
    assert out.shape == (360, 640, 3)


def test_emoji_in_a_name_are_drawn_with_an_emoji_font(fonts: FontSet) -> None:
    """With an emoji font installed (the Makefile's fonts-symbola), a name's emoji are
    drawn with it, not as the primary font's missing-glyph boxes."""
    for emoji in ("👩", "🎉"):
        assert fonts.font_file(emoji) not in (None, fonts.font_file("A")), emoji
        assert fontconfig_match(f":charset={ord(emoji):x}") is not None
    party = fonts.render("🎉", 24)
    assert (party > 128).sum() > 30


def test_a_character_no_font_has_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    """A name in a script no installed font has is drawn as boxes, and the log says
    once what to install, however often and at whatever size it is drawn."""
    hieroglyph = "\U00013000"  # Egyptian: no Debian font the tests install has it
    fonts = FontSet()
    with caplog.at_level(logging.WARNING, logger="streamer.live.fonts"):
        for text, size in ((f"Ann {hieroglyph}", 20), (f"Ann {hieroglyph}", 26),
                           (f"{hieroglyph} Bo", 20), ("Ann", 20)):
            assert fonts.render(text, size).shape[0] > 0
    warned = [r.getMessage() for r in caplog.records if "no installed font" in r.getMessage()]
    assert len(warned) == 1, warned
    assert hieroglyph in warned[0] and "fonts-noto-cjk" in warned[0], warned


def test_font_from_the_settings(tmp_path: Path) -> None:
    cjk = fontconfig_match(":lang=zh-cn")
    assert cjk is not None
    chosen = FontSet(Path(cjk[0]))
    assert chosen.font_file("A") == cjk[0] and chosen.font_file("王") == cjk[0]
    bad = tmp_path / "broken.ttf"
    bad.write_bytes(b"not a font")
    with pytest.raises(ConfigError, match=r"font = .*broken\.ttf"):
        FontSet(bad)


def test_boxes_are_green_when_named_and_red_when_unknown() -> None:
    frame = np.zeros((360, 640, 3), np.uint8)
    BoxAnnotator().annotate(frame, [_view("Ada"), _view(None, box=(400.0, 50.0, 480.0, 140.0))])
    assert tuple(frame[215, 200]) == KNOWN and tuple(frame[95, 400]) == UNKNOWN
    assert not frame[220, 250].any()  # inside the box: untouched


def test_annotators_keep_no_state_and_leave_the_input_alone(fonts: FontSet) -> None:
    frame = _frame()
    before = frame.copy()
    views = [_view("Ada"), _view(None, box=(10.0, 5.0, 60.0, 70.0), track_id=9)]
    first = annotate_frame(
        frame, views, fonts, overlay=Overlay(track_ids=True, fps=True), fps=29.97
    )
    second = annotate_frame(
        frame, views, fonts, overlay=Overlay(track_ids=True, fps=True), fps=29.97
    )
    assert np.array_equal(frame, before)
    assert np.array_equal(first, second)
    labels = LabelAnnotator(fonts).annotate(frame.copy(), views)
    assert not np.array_equal(
        labels, LabelAnnotator(fonts).annotate(frame.copy(), views, track_ids=True)
    )
    fps = FpsAnnotator(fonts).annotate(frame.copy(), 12.5)
    assert not np.array_equal(fps[:30, :100], frame[:30, :100])


def test_label_text() -> None:
    assert label_text(_view("Ada")) == "Ada\u200e 0.93"
    assert label_text(_view(None)) == "unknown"  # its score is the closest person's
    assert label_text(TrackView(7, (0, 0, 1, 1), None, 0.0), track_id=True) == "#7 unknown"


def test_labels_stay_inside_small_frames(fonts: FontSet) -> None:
    tiny = np.zeros((24, 40, 3), np.uint8)
    views = [_view("Bartholomew Fitzgerald-Smythe", box=(-10.0, -5.0, 60.0, 30.0))]
    out = annotate_frame(tiny, views, fonts, overlay=Overlay(track_ids=True, fps=True), fps=3.0)
    assert out.shape == tiny.shape and out.any()
