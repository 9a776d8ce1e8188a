"""Fonts for names in any script, found through fontconfig.

`FontSet` renders a line of text into an alpha mask with a primary TrueType font (the
``font`` setting, else fontconfig's ``sans-serif``) and, for each character the
primary font lacks, the font fontconfig names for that character
(``fc-match ':charset=HEX'``): a Chinese name in a Latin font still renders, in the
CJK font. Coverage is read from each font's own character map (``fc-query``). A
character no installed font has is drawn as the primary font's missing-glyph box,
and the log says once which package would draw it; nothing raises. Without
fontconfig, Pillow's built-in font is used.

Pillow lays out each run with libraqm when it has it (right-to-left and joined
Arabic); masks are cached per (text, size), so a name is rasterised once.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import subprocess
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont, features

from facecore.errors import ConfigError

__all__ = ["FontSet", "fontconfig_match"]

log = logging.getLogger(__name__)

FontKey = tuple[str, int]  # (file, face index inside a .ttc)
AnyFont = ImageFont.FreeTypeFont | ImageFont.ImageFont
FC_TIMEOUT_S = 10.0


def _fontconfig(*args: str) -> str | None:
    """Output of a fontconfig tool, or None when it is missing or fails."""
    tool = shutil.which(args[0])
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, *args[1:]], capture_output=True, text=True, timeout=FC_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s failed: %s", args[0], exc)
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def fontconfig_match(pattern: str) -> FontKey | None:
    """The font file (and face index) fontconfig picks for ``pattern``, e.g.
    ``':lang=zh-cn'`` or ``'sans-serif'``."""
    found = _fontconfig("fc-match", "-f", "%{file}\t%{index}", pattern)
    if found is None:
        return None
    file, _, index = found.partition("\t")
    return (file, int(index or 0)) if file else None


def _charset(key: FontKey) -> tuple[list[int], list[int]] | None:
    """The code point ranges a font covers (starts, ends), or None if unknown."""
    text = _fontconfig("fc-query", "-i", str(key[1]), "-f", "%{charset}", key[0])
    if text is None:
        return None
    starts, ends = [], []
    for part in text.split():
        low, _, high = part.partition("-")
        starts.append(int(low, 16))
        ends.append(int(high or low, 16))
    return starts, ends


_JOINERS_AND_MARKS = "\u200c\u200d\u200e\u200f"  # ZWNJ, ZWJ, LRM, RLM: shaping, not glyphs


def _is_drawable(char: str) -> bool:
    return (
        unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn")
        or char in _JOINERS_AND_MARKS
    )


def _rides_along(char: str) -> bool:
    """Marks, spaces and joiners are drawn with the font of the text around them."""
    return unicodedata.category(char)[0] in "MZ" or char in _JOINERS_AND_MARKS


class FontSet:
    """A primary font with per-character fallbacks; thread-safe."""

    def __init__(self, primary: Path | None = None, *, cache_size: int = 512) -> None:
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._fonts: dict[tuple[FontKey | None, int], AnyFont] = {}
        self._coverage: dict[FontKey, tuple[list[int], list[int]] | None] = {}
        self._fallback: dict[str, FontKey | None] = {}
        self._unfound: list[str] = []  # characters just found in no font, to be warned of
        self._raqm = bool(features.check("raqm"))
        self._masks: OrderedDict[tuple[str, int], NDArray[np.uint8]] = OrderedDict()
        if primary is not None:
            try:
                ImageFont.truetype(str(primary), 12)
            except OSError as exc:
                raise ConfigError(
                    f"not a usable TrueType font: {exc}", key="font", value=str(primary)
                ) from exc
            self.primary: FontKey | None = (str(primary), 0)
        else:
            self.primary = fontconfig_match("sans-serif")
            if self.primary is None:
                log.warning("fontconfig found no font; names are drawn with Pillow's built-in font")

    def render(self, text: str, size: int) -> NDArray[np.uint8]:
        """One line of ``text`` as an alpha mask [h, w] uint8 (255 = ink), ``size``
        pixels per em; characters no font has are drawn as missing-glyph boxes."""
        key = (text, size)
        with self._lock:
            mask = self._masks.get(key)
            if mask is None:
                mask = self._draw("".join(c for c in text if _is_drawable(c)), size)
                self._masks[key] = mask
                if len(self._masks) > self.cache_size:
                    self._masks.popitem(last=False)
            else:
                self._masks.move_to_end(key)
            return mask

    def _draw(self, text: str, size: int) -> NDArray[np.uint8]:
        runs: list[tuple[AnyFont, str]] = []
        for char in text:
            font = self._font_for(char, size)
            if runs and (runs[-1][0] is font or _rides_along(char)):
                runs[-1] = (runs[-1][0], runs[-1][1] + char)
            else:
                runs.append((font, char))
        if self._unfound:
            log.warning(
                "no installed font has %s (in %r): drawn as boxes. Install a font that "
                "has them (Debian: fonts-noto-cjk for Chinese, Japanese and Korean, "
                "fonts-symbola for emoji) or set `font`", ", ".join(self._unfound), text,
            )
            self._unfound.clear()
        if not runs:
            runs = [(self._font(self.primary, size), " ")]
        metrics = [_metrics(font, size) for font, _ in runs]
        ascent = max(a for a, _ in metrics)
        descent = max(d for _, d in metrics)
        # a label reads left to right ("#7 name 0.93"); a right-to-left name inside it
        # is still laid out right to left by libraqm
        direction = "ltr" if self._raqm else None
        widths = [font.getlength(part, direction=direction) for font, part in runs]
        image = Image.new("L", (max(int(np.ceil(sum(widths))) + 2, 1), ascent + descent), 0)
        draw = ImageDraw.Draw(image)
        x = 1.0
        for (font, part), width in zip(runs, widths, strict=True):
            draw.text((x, ascent), part, fill=255, font=font, anchor="ls", direction=direction)
            x += width
        return np.asarray(image, np.uint8)

    def font_file(self, char: str) -> str | None:
        """The font file that draws ``char`` (None: Pillow's built-in font)."""
        with self._lock:
            key = self._key_for(char)
        return key[0] if key is not None else None

    def _font_for(self, char: str, size: int) -> AnyFont:
        return self._font(self._key_for(char), size)

    def _key_for(self, char: str) -> FontKey | None:
        primary = self.primary
        if primary is None or _rides_along(char) or self._covers(primary, char):
            return primary
        if char not in self._fallback:
            found = fontconfig_match(f":charset={ord(char):x}")
            covered = found is not None and self._covers(found, char)
            self._fallback[char] = found if covered else None
            if not covered:
                self._unfound.append(char)
        return self._fallback[char] or primary

    def _covers(self, key: FontKey, char: str) -> bool:
        if key not in self._coverage:
            self._coverage[key] = _charset(key)
        ranges = self._coverage[key]
        if ranges is None:
            return True  # unknown coverage: trust the font
        starts, ends = ranges
        i = bisect.bisect_right(starts, ord(char)) - 1
        return i >= 0 and ord(char) <= ends[i]

    def _font(self, key: FontKey | None, size: int) -> AnyFont:
        font = self._fonts.get((key, size))
        if font is None:
            try:
                font = (
                    ImageFont.load_default(size)
                    if key is None
                    else ImageFont.truetype(key[0], size, index=key[1])
                )
            except OSError as exc:
                log.warning("font %s cannot be loaded (%s); using Pillow's built-in font", key, exc)
                font = ImageFont.load_default(size)
            self._fonts[(key, size)] = font
        return font


def _metrics(font: AnyFont, size: int) -> tuple[int, int]:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent, descent
    return size, size // 4
