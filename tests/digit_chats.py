"""Chat samples on scikit-learn's real handwritten digits, shared by the fixtures and the standalone training
scripts (run under torchrun or as subprocesses, where no fixture reaches them)."""

from PIL import Image
from sklearn.datasets import load_digits


def digit_chats(count: int) -> list[dict]:
    """The first `count` digits as "<image>\\nWhat digit is this?" -> "It is N.", each image 32x32 grayscale."""
    digits = load_digits()
    return [
        {
            "messages": [
                {"role": "user", "content": "<image>\nWhat digit is this?"},
                {"role": "assistant", "content": f"It is {label}."},
            ],
            "images": [Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((32, 32))],
        }
        for pixels, label in zip(digits.images[:count], digits.target[:count], strict=True)
    ]
