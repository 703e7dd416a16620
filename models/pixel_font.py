"""A 5x7 pixel font for the simulators' burned-in text.

The committed samples must regenerate bit for bit on any machine (tests/models checks it), and
OpenCV's anti-aliased ``putText`` does not: its glyph advances and edge shading changed from one
install to another (after an OpenCV upgrade, and again on a fresh machine), each time moving about
1,200 pixels of every cine frame while everything else in the frame stayed equal. A bitmap font drawn
with numpy indexing gives the same pixels with any OpenCV. Real carts burn in crisp pixel fonts too.
"""

from __future__ import annotations

import numpy as np

# Each glyph: 7 rows of 5 columns, '#' = ink. The HD44780 character ROM's shapes, which every cart
# display and most vendors' overlays resemble.
_GLYPHS = {
    " ": (".....", ".....", ".....", ".....", ".....", ".....", "....."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "^": ("..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "z": (".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"),
}
GLYPH_H, GLYPH_W, ADVANCE = 7, 5, 6
_BITMAPS = {c: np.array([[ch == "#" for ch in row] for row in rows], bool) for c, rows in _GLYPHS.items()}


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """The ink of ``text`` as a bool array, ``GLYPH_H * scale`` rows high."""
    missing = sorted(set(text) - set(_BITMAPS))
    if missing:
        raise ValueError(f"pixel font has no glyph for {''.join(missing)!r} (in {text!r}); add it to models/pixel_font.py")
    out = np.zeros((GLYPH_H, max(0, ADVANCE * len(text) - 1)), bool)
    for i, c in enumerate(text):
        out[:, ADVANCE * i:ADVANCE * i + GLYPH_W] = _BITMAPS[c]
    return np.kron(out, np.ones((scale, scale), bool)) if scale > 1 else out


def draw_text(img: np.ndarray, text: str, left: int, baseline: int, value: int, scale: int = 1) -> None:
    """Burn ``text`` into a uint8 image with its bottom row on ``baseline`` (like ``cv2.putText``'s origin).

    Ink that falls outside the image is clipped, as a display would.
    """
    ink = text_mask(text, scale)
    top = baseline - ink.shape[0] + 1
    h, w = img.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + ink.shape[0]), min(w, left + ink.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    region = img[y0:y1, x0:x1]
    region[ink[y0 - top:y1 - top, x0 - left:x1 - left]] = value
