"""Labelled synthetic plate scenes for the recogniser's tests and benchmark.

    python -m bench.plate_scenes OUT_DIR [--count N] [--seed N] [--negatives 0.1]

writes OUT_DIR/NNNN.jpg and OUT_DIR/labels.json ({file: plate or null}).

A scene is a 640x480 street-like picture: a car body carrying one plate of a
region's format and font (UK, DE, FR, IT, ES, NL, US), seen in perspective,
with blur, glare, noise, night-time contrast or a partly occluded edge, among
signs, stickers and dealer text that are not plates. Some scenes hold no plate
at all. Everything follows from the seed: the same seed gives the same images.
Fonts: OpenCV's Hershey fonts, plus DejaVu/Liberation TrueType faces through
Pillow where the system has them (Debian fonts-dejavu-core).
"""

from __future__ import annotations

import argparse
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

W, H = 640, 480
LETTERS = string.ascii_uppercase
DIGITS = string.digits
ES_LETTERS = "BCDFGHJKLMNPRSTVWXYZ"  # Spanish plates use no vowels, nor Q or Ñ
# Letters a region never issues, each drawn as its next letter instead: Dutch plates
# carry no vowels, British ones no I nor Q. Mapped after the draw (not drawn from a
# smaller alphabet) so that every other scene of a seed stays as it was.
_NOT_ISSUED = {"nl": str.maketrans("AEIOU", "BFJPV"), "uk": str.maketrans("IQ", "JR")}

_TTF_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
)
_HERSHEY = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)

DISTRACTORS = (
    "YOUR DEALER", "EXIT", "NO PARKING", "PARKING 24H", "ZONE 3", "CALL 555 0199",
    "STOP", "AUTO SALES", "VISITORS", "SLOW", "GATE 2", "MAX 10 KM/H", "CCTV IN USE",
    "ONE WAY", "DELIVERIES", "WWW.MOTORS.NET", "BAY 14", "AREA B", "TOWING 24/7",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scene:
    """One labelled picture: BGR image, the plate in it (normalised) or None, its region."""

    image: np.ndarray
    plate: str | None
    region: str | None
    box: tuple[int, int, int, int] | None  # x, y, w, h of the plate in the image


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def plate_text(rng: random.Random, region: str) -> tuple[str, str]:
    """(display text with the region's separators, normalised plate) of a random plate."""
    L, D = LETTERS, DIGITS
    if region == "uk":
        shown = f"{_pick(rng, L, 2)}{_pick(rng, D, 2)} {_pick(rng, L, 3)}"
    elif region == "fr":
        shown = f"{_pick(rng, L, 2)}-{_pick(rng, D, 3)}-{_pick(rng, L, 2)}"
    elif region == "it":
        shown = f"{_pick(rng, L, 2)} {_pick(rng, D, 3)} {_pick(rng, L, 2)}"
    elif region == "es":
        shown = f"{_pick(rng, D, 4)} {_pick(rng, ES_LETTERS, 3)}"
    elif region == "nl":
        shown = rng.choice(
            (
                f"{_pick(rng, D, 2)}-{_pick(rng, L, 3)}-{_pick(rng, D, 1)}",
                f"{_pick(rng, D, 1)}-{_pick(rng, L, 3)}-{_pick(rng, D, 2)}",
                f"{_pick(rng, L, 2)}-{_pick(rng, D, 3)}-{_pick(rng, L, 1)}",
                f"{_pick(rng, L, 1)}-{_pick(rng, D, 3)}-{_pick(rng, L, 2)}",
            )
        )
    elif region == "de":
        district, letters = rng.randint(1, 3), rng.randint(1, 2)
        digits = rng.randint(1, min(4, 8 - district - letters))  # 8 characters at most
        # German plates leave about a character's width before the number: two spaces
        shown = f"{_pick(rng, L, district)}-{_pick(rng, L, letters)}  "
        shown += str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    elif region == "us":
        shown = rng.choice(
            (
                f"{rng.randint(1, 9)}{_pick(rng, L, 3)}{_pick(rng, D, 3)}",
                f"{_pick(rng, L, 3)}-{_pick(rng, D, 4)}",
                f"{_pick(rng, L, 3)} {_pick(rng, D, 3)}",
            )
        )
    else:
        raise ValueError(f"unknown region {region!r}")
    shown = shown.translate(_NOT_ISSUED.get(region, {}))
    return shown, "".join(c for c in shown if c.isalnum())


REGIONS = ("uk", "de", "fr", "it", "es", "nl", "us")
_US_STATES = ("CALIFORNIA", "TEXAS", "NEW YORK", "OHIO", "FLORIDA")


def _fonts() -> list[object]:
    """Hershey font ids, then the TrueType faces this system has (by path)."""
    fonts: list[object] = list(_HERSHEY)
    try:
        import PIL  # noqa: F401  # optional: TrueType faces
    except ImportError:
        return fonts
    fonts += [p for p in _TTF_CANDIDATES if Path(p).exists()]
    return fonts


def _draw_text(
    img: np.ndarray,
    text: str,
    box: tuple[int, int, int, int],
    font: object,
    colour: tuple[int, int, int],
) -> None:
    """Draw text filling box (x, y, w, h) of img in place with a Hershey or TrueType font."""
    x, y, w, h = box
    if isinstance(font, int):
        thick = max(2, h // 9)
        (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
        scale = min(w / tw, h / th) * 0.92
        thick = max(2, round(thick * scale * 0.9))
        (tw, th), _base = cv2.getTextSize(text, font, scale, thick)
        org = (x + (w - tw) // 2, y + (h + th) // 2)
        cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)
        return
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), size=max(8, h))
    left, top, right, bottom = face.getbbox(text)
    scale = min(w / max(1, right - left), h / max(1, bottom - top)) * 0.92
    face = ImageFont.truetype(str(font), size=max(8, int(h * scale)))
    left, top, right, bottom = face.getbbox(text)
    pil = Image.fromarray(img[:, :, ::-1].copy())
    ImageDraw.Draw(pil).text(
        (x + (w - (right - left)) // 2 - left, y + (h - (bottom - top)) // 2 - top),
        text,
        font=face,
        fill=colour[::-1],
    )
    img[:] = np.asarray(pil)[:, :, ::-1]


def render_plate(rng: random.Random, region: str, shown: str, font: object) -> np.ndarray:
    """A flat plate image (BGR) of the region's look carrying the shown text."""
    ph = 110
    pw = {"uk": 520, "us": 300, "de": 520, "fr": 520, "it": 520, "es": 520, "nl": 520}[region]
    bg = (255, 255, 255)
    if region == "uk" and rng.random() < 0.5:
        bg = (30, 200, 250)  # rear plate: yellow
    if region == "nl":
        bg = (20, 190, 245)
    plate = np.full((ph, pw, 3), bg, np.uint8)
    ink = (20, 20, 20)
    cv2.rectangle(plate, (2, 2), (pw - 3, ph - 3), ink, 3)
    left = 10
    if region in ("de", "fr", "it", "es", "nl") or (region == "uk" and rng.random() < 0.4):
        band = 48
        cv2.rectangle(plate, (4, 4), (band, ph - 5), (160, 50, 10), -1)
        code = {"de": "D", "fr": "F", "it": "I", "es": "E", "nl": "NL", "uk": "UK"}[region]
        cv2.putText(
            plate,
            code,
            (10, ph - 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.8 if len(code) > 1 else 1.1,
            (255, 255, 255),
            2,
            cv2.LINE_AA,
        )
        left = band + 8
    top, bottom = 14, ph - 14
    if region == "us":
        state = rng.choice(_US_STATES)
        cv2.putText(
            plate,
            state,
            (pw // 2 - 8 * len(state), 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            (150, 40, 30),
            2,
            cv2.LINE_AA,
        )
        top = 32
    _draw_text(plate, shown, (left, top, pw - left - 10, bottom - top), font, ink)
    return plate


def _background(rng: random.Random) -> np.ndarray:
    """A street-like backdrop: sky/wall gradient, ground, blocks of buildings."""
    img = np.zeros((H, W, 3), np.uint8)
    top = np.array([rng.randint(90, 230) for _ in range(3)], np.float32)
    bottom = np.array([rng.randint(40, 160) for _ in range(3)], np.float32)
    ramp = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    img[:] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    for _ in range(rng.randint(3, 8)):
        x, y = rng.randint(0, W - 40), rng.randint(0, H // 2)
        colour = tuple(rng.randint(30, 220) for _ in range(3))
        cv2.rectangle(img, (x, y), (x + rng.randint(40, 220), y + rng.randint(40, 200)), colour, -1)
    return img


def _sign(img: np.ndarray, rng: random.Random, fonts: list[object]) -> None:
    """A sign, sticker or dealer text somewhere in the picture (never a plate)."""
    text = rng.choice(DISTRACTORS)
    h = rng.randint(18, 40)
    w = min(W - 20, int(h * len(text) * rng.uniform(0.55, 0.8)))
    x, y = rng.randint(0, W - w - 1), rng.randint(0, H - h - 12)
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    ink = (255, 255, 255) if sum(bg) < 380 else (10, 10, 10)
    cv2.rectangle(img, (x - 4, y - 4), (x + w + 4, y + h + 4), bg, -1)
    _draw_text(img, text, (x, y, w, h), rng.choice(fonts), ink)


def _place(img: np.ndarray, plate: np.ndarray, rng: random.Random) -> tuple[int, int, int, int]:
    """Warp the plate onto a car body in the scene in perspective; returns its bounding box."""
    ph, pw = plate.shape[:2]
    target_w = rng.uniform(120, 240) * (pw / 520) ** 0.5
    target_h = target_w * ph / pw
    cx, cy = rng.uniform(150, W - 150), rng.uniform(170, H - 70)
    body = tuple(rng.randint(20, 230) for _ in range(3))
    bw, bh = target_w * rng.uniform(2.2, 3.0), target_h * rng.uniform(3.0, 4.5)
    cv2.rectangle(
        img,
        (int(cx - bw / 2), int(cy - bh * 0.6)),
        (int(cx + bw / 2), int(cy + bh * 0.4)),
        body,
        -1,
    )
    skew = rng.uniform(-0.18, 0.18) * target_h  # yaw: one side taller than the other
    tilt = rng.uniform(-0.08, 0.08) * target_w  # roll
    x0, y0 = cx - target_w / 2, cy - target_h / 2
    dst = np.float32([
        [x0, y0 - skew + tilt * 0.2], [x0 + target_w, y0 + skew - tilt * 0.2],
        [x0 + target_w, y0 + target_h - skew * 0.3 - tilt * 0.2],
        [x0, y0 + target_h + skew * 0.3 + tilt * 0.2],
    ])  # fmt: skip
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(plate, m, (W, H), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), m, (W, H))
    img[mask > 127] = warped[mask > 127]
    x, y, w, h = cv2.boundingRect(dst.astype(np.int32))
    return x, y, w, h


def _degrade(img: np.ndarray, rng: random.Random, box: tuple[int, int, int, int] | None) -> None:
    """Glare, occlusion, night contrast, blur and sensor noise, each by chance, in place."""
    if box is not None and rng.random() < 0.2:  # glare: a bright soft spot near the plate
        x, y, w, h = box
        spot = np.zeros(img.shape[:2], np.float32)
        centre = (int(x + rng.uniform(0, w)), int(y + rng.uniform(0, h)))
        cv2.circle(spot, centre, int(h * rng.uniform(0.4, 0.9)), 1.0, -1)
        spot = cv2.GaussianBlur(spot, (0, 0), h * 0.3) * rng.uniform(0.3, 0.6)
        img[:] = np.clip(img + spot[:, :, None] * 255, 0, 255).astype(np.uint8)
    if box is not None and rng.random() < 0.15:  # occlusion: something across a plate corner
        x, y, w, h = box
        # the band or the outer edge only: a hidden character is not a readable plate
        x0, x1 = (
            (x - 8, x + int(w * 0.07)) if rng.random() < 0.5 else (x + int(w * 0.97), x + w + 8)
        )
        cv2.rectangle(
            img,
            (x0, y - 10),
            (x1, y + int(h * 0.8)),
            tuple(rng.randint(0, 120) for _ in range(3)),
            -1,
        )
    if rng.random() < 0.2:  # night: dark, low contrast, a little lifted black
        img[:] = (img.astype(np.float32) * rng.uniform(0.25, 0.45) + rng.uniform(5, 20)).astype(
            np.uint8
        )
    if rng.random() < 0.4:
        k = rng.choice((3, 5))
        img[:] = cv2.GaussianBlur(img, (k, k), 0)
    if rng.random() < 0.1:  # motion blur along the road
        kernel = np.zeros((7, 7), np.float32)
        kernel[3, :] = 1 / 7
        img[:] = cv2.filter2D(img, -1, kernel)
    sigma = rng.uniform(2, 10)
    noise = np.random.default_rng(rng.randint(0, 2**32 - 1)).normal(0, sigma, img.shape)
    img[:] = np.clip(img + noise, 0, 255).astype(np.uint8)


def make_scene(seed: int, *, negative: bool = False, region: str | None = None) -> Scene:
    """The scene of this seed: a plate (of region, or a random one) unless negative."""
    rng = random.Random(seed)
    fonts = _fonts()
    img = _background(rng)
    for _ in range(rng.randint(1, 3)):
        _sign(img, rng, fonts)
    plate: str | None = None
    box = None
    if not negative:
        region = region or rng.choice(REGIONS)
        shown, plate = plate_text(rng, region)
        box = _place(img, render_plate(rng, region, shown, rng.choice(fonts)), rng)
        if rng.random() < 0.5:  # a dealer frame or sticker right under the plate
            x, y, w, h = box
            sy = min(H - 16, y + h + 4)
            cv2.rectangle(img, (x, sy), (x + w, sy + 14), (30, 30, 30), -1)
            cv2.putText(
                img,
                rng.choice(("YOUR DEALER", "AUTO SALES", "MOTORS")),
                (x + 4, sy + 11),
                cv2.FONT_HERSHEY_PLAIN,
                0.8,
                (240, 240, 240),
                1,
            )
    else:
        region = None
    _degrade(img, rng, box)
    return Scene(img, plate, region, box)


# Scenes made to be misread: text that a line of OCR may take for a plate, next to a
# real plate or on its own. `tricky_scene(seed, kind)` makes one; the tests require
# that none of them yields a plate that is not in the picture.
TRICKY_KINDS = ("hidden-sign", "plate-shaped-sign", "sticker", "dealer-frame", "hidden-band")
_HIDDEN_SIGNS = ("MAX 10 KM/H", "MAX 20 KM/H", "MAX 30 KM/H", "MAX 50 KM/H")
# sign text in a plate's letter-digit shape (a Dutch sidecode's, a German series'),
# with letters no such plate carries
_PLATE_SHAPED = ("BAY 14 A", "NO 24 HR", "LOT 12 E", "KM 10 AU")


def tricky_scene(seed: int, kind: str) -> Scene:
    """A scene of one TRICKY_KINDS kind: a plate (none for plate-shaped-sign) among decoys."""
    if kind not in TRICKY_KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(TRICKY_KINDS)})")
    rng = random.Random(seed)
    fonts = [f for f in _fonts() if isinstance(f, int)] if kind == "hidden-sign" else _fonts()
    img = _background(rng)
    plate: str | None = None
    region: str | None = None
    box = None
    if kind == "plate-shaped-sign":
        text = rng.choice(_PLATE_SHAPED)
        h = rng.randint(30, 44)
        w, x, y = int(h * len(text) * 0.7), rng.randint(20, 200), rng.randint(40, 380)
        cv2.rectangle(img, (x - 6, y - 6), (x + w + 6, y + h + 6), (245, 245, 245), -1)
        cv2.rectangle(img, (x - 6, y - 6), (x + w + 6, y + h + 6), (20, 20, 20), 2)
        _draw_text(img, text, (x, y, w, h), rng.choice(fonts), (15, 15, 15))
    else:
        region = rng.choice(REGIONS)
        shown, plate = plate_text(rng, region)
        box = _place(img, render_plate(rng, region, shown, rng.choice(fonts)), rng)
        x, y, w, h = box
        if kind == "hidden-sign":
            # a speed sign behind the car: its "M/H" hidden, "MAX 10 K" left to read
            full = rng.choice(_HIDDEN_SIGNS)
            seen = full[: full.index("K") + 1]
            sh = rng.randint(28, 40)
            sw = int(sh * len(seen) * 0.62)
            sx, sy = max(4, x - sw - 30), max(6, y - sh - rng.randint(30, 80))
            cv2.rectangle(img, (sx - 5, sy - 5), (sx + sw + 60, sy + sh + 5), (245, 245, 245), -1)
            _draw_text(img, seen, (sx, sy, sw, sh), rng.choice(fonts), (10, 10, 10))
            cover = tuple(rng.randint(20, 120) for _ in range(3))
            cv2.rectangle(img, (sx + sw + 4, sy - 20), (sx + sw + 90, sy + sh + 40), cover, -1)
        elif kind == "sticker":
            # an oval country sticker beside the plate and a dealer's phone number under it
            code = rng.choice(("NL", "GB", "D", "F"))
            cx = x + w + 36 if x + w + 70 < W else x - 36
            cv2.ellipse(img, (cx, y + h // 2), (30, 20), 0, 0, 360, (250, 250, 250), -1)
            cv2.ellipse(img, (cx, y + h // 2), (30, 20), 0, 0, 360, (10, 10, 10), 2)
            cv2.putText(img, code, (cx - 11 * len(code), y + h // 2 + 9),
                        cv2.FONT_HERSHEY_DUPLEX, 0.9, (10, 10, 10), 2, cv2.LINE_AA)  # fmt: skip
            sy = min(H - 18, y + h + 4)
            cv2.rectangle(img, (x, sy), (x + w, sy + 16), (30, 30, 30), -1)
            cv2.putText(img, "CALL 555 0199", (x + 4, sy + 12), cv2.FONT_HERSHEY_PLAIN, 0.9,
                        (240, 240, 240), 1)  # fmt: skip
        elif kind == "dealer-frame":
            # a dealer's frame round the plate: its name above, its town below
            top, bottom = max(0, y - 16), min(H - 16, y + h + 2)
            cv2.rectangle(img, (x - 6, top), (x + w + 6, top + 14), (25, 25, 25), -1)
            cv2.rectangle(img, (x - 6, bottom), (x + w + 6, bottom + 14), (25, 25, 25), -1)
            cv2.putText(img, rng.choice(("AUTO SALES", "MOTORS", "YOUR DEALER")), (x, top + 11),
                        cv2.FONT_HERSHEY_PLAIN, 0.9, (235, 235, 235), 1)  # fmt: skip
            cv2.putText(img, rng.choice(("LEEDS", "UTRECHT", "LYON")), (x, bottom + 11),
                        cv2.FONT_HERSHEY_PLAIN, 0.9, (235, 235, 235), 1)  # fmt: skip
        else:  # hidden-band: something across the plate's left end, its band and code
            cv2.rectangle(img, (x - 10, y - 12), (x + int(w * 0.08), y + h + 6), (40, 40, 40), -1)
    _sign(img, rng, fonts)
    sigma = rng.uniform(2, 6)
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    img[:] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return Scene(img, plate, region, box)


def scenes(count: int, seed: int = 0, negatives: float = 0.1) -> list[Scene]:
    """count scenes from seed; about the `negatives` share of them hold no plate."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        negative = rng.random() < negatives
        out.append(make_scene(seed * 100_003 + i, negative=negative))
    return out


def write_set(
    folder: Path, count: int, seed: int = 0, negatives: float = 0.1
) -> dict[str, str | None]:
    """Write count labelled scenes as JPEGs plus labels.json to folder; returns the labels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str | None] = {}
    for i, scene in enumerate(scenes(count, seed, negatives)):
        name = f"{i:04d}.jpg"
        cv2.imwrite(str(folder / name), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        labels[name] = scene.plate
    (folder / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    return labels


def main(argv: list[str] | None = None) -> int:
    """Write a labelled set to a folder."""
    ap = argparse.ArgumentParser(prog="python -m bench.plate_scenes", description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negatives", type=float, default=0.1)
    args = ap.parse_args(argv)
    labels = write_set(args.out, args.count, args.seed, args.negatives)
    print(
        json.dumps(
            {
                "folder": str(args.out),
                "images": len(labels),
                "plates": sum(v is not None for v in labels.values()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
