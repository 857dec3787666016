"""Image preparation before the vision tower's own image processor: any PIL mode to RGB, LLaVA's pad-to-square."""

import math
import warnings

import numpy as np
from PIL import Image

# Longer side below which an image is never shrunk before squaring: above any vision tower's input size.
SQUARE_MIN_SIDE = 1024


def check_pixels(image: Image.Image) -> None:
    """Refuse an image over `PIL.Image.MAX_IMAGE_PIXELS` (a decompression bomb, or a mistake), as Pillow does only
    above twice that: between the two it decodes the image with a warning."""
    pixels = image.width * image.height
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} = {pixels} pixels is more than PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}."
        )


def open_image(path) -> Image.Image:
    """An image file decoded whole; one over `PIL.Image.MAX_IMAGE_PIXELS` is refused before it is decoded."""
    with warnings.catch_warnings():
        # Pillow only warns below twice the limit; check_pixels refuses the image instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    with image:
        check_pixels(image)
        image.load()
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent areas become white, 16/32-bit and float images are scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied; Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def shrink_for_square(image: Image.Image, min_side: int = SQUARE_MIN_SIDE) -> Image.Image:
    """Shrink a long, thin image before it is made square, so the square holds at most about 4x its pixels (and at
    least `min_side` a side): padding a 1x60000 strip, under Pillow's decompression-bomb limit, would otherwise
    allocate 60000x60000 pixels. An image of aspect ratio up to 4, or whose longer side is `min_side` or less, is
    returned as it is."""
    width, height = image.size
    side = max(width, height)
    limit = max(min_side, math.isqrt(4 * width * height))
    if side <= limit:
        return image
    scale = limit / side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BOX)  # BOX averages every source pixel: a thin line stays visible


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square canvas of its longer side, filled with `fill` (LLaVA's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def stretch_to_square(image: Image.Image) -> Image.Image:
    """Resize to a square of the longer side, so the tower's resize-and-crop keeps the whole picture."""
    side = max(image.size)
    return image if image.size == (side, side) else image.resize((side, side), Image.Resampling.BICUBIC)
