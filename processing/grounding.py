"""Qwen-VL grounding: `<ref>name</ref><box>(x1,y1),(x2,y2)</box>` in text, coordinates normalised to [0, 1000).

`parse_boxes` turns the boxes of a response into pixel boxes for a given image, `format_box` writes one in the
text form the model learns, and `draw_boxes` draws a response's boxes on a copy of the image.
"""

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

SCALE = 1000
_BOX = re.compile(
    r"(?:<ref>(?P<ref>.*?)</ref>)?\s*<box>\s*\((?P<x1>\d+),\s*(?P<y1>\d+)\)\s*,\s*\((?P<x2>\d+),\s*(?P<y2>\d+)\)\s*</box>",
    re.DOTALL,
)


@dataclass(frozen=True)
class Box:
    """A box in pixels of its image (x1, y1) top-left, (x2, y2) bottom-right; `ref` is the phrase it grounds."""

    ref: str | None
    x1: float
    y1: float
    x2: float
    y2: float


def parse_boxes(text: str, image_size: tuple[int, int]) -> list[Box]:
    """The boxes in `text`, in pixels of an image of `image_size` (width, height). A box without its own
    `<ref>` takes the previous one's phrase, as Qwen-VL writes several boxes for one phrase."""
    width, height = image_size
    boxes, ref = [], None
    for match in _BOX.finditer(text):
        ref = match["ref"] if match["ref"] is not None else ref
        x1, y1, x2, y2 = (int(match[name]) for name in ("x1", "y1", "x2", "y2"))
        if max(x1, y1, x2, y2) >= SCALE:
            raise ValueError(f"Box {match.group(0)!r} has a coordinate outside [0, {SCALE}).")
        boxes.append(Box(ref, x1 * width / SCALE, y1 * height / SCALE, x2 * width / SCALE, y2 * height / SCALE))
    return boxes


def format_box(ref: str, box: tuple[float, float, float, float], image_size: tuple[int, int]) -> str:
    """`<ref>ref</ref><box>(x1,y1),(x2,y2)</box>` for a pixel box of an image of `image_size` (width, height)."""
    sides = tuple(image_size) * 2  # width, height, width, height
    scaled = [min(SCALE - 1, max(0, int(value * SCALE / side))) for value, side in zip(box, sides, strict=True)]
    return f"<ref>{ref}</ref><box>({scaled[0]},{scaled[1]}),({scaled[2]},{scaled[3]})</box>"


def draw_boxes(image: Image.Image, response: str, color: str = "red", width: int = 2) -> Image.Image:
    """A copy of `image` with each box found in `response` outlined and labelled with its phrase."""
    drawn = image.convert("RGB")
    draw = ImageDraw.Draw(drawn)
    for box in parse_boxes(response, image.size):
        draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=color, width=width)
        if box.ref:
            draw.text((box.x1 + width, box.y1 + width), box.ref, fill=color)
    return drawn
