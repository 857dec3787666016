"""Chat samples on scikit-learn's real handwritten digits, shared by the fixtures and the standalone training
scripts (run under torchrun or as subprocesses, where no fixture reaches them)."""

from PIL import Image
from sklearn.datasets import load_digits

from visionbridge.trainer.digits import DIGIT_WORDS


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


def captioned(chats: list[dict]) -> list[dict]:
    """The same images with a caption as the answer ("A handwritten seven."): the image-text pairs of BLIP-2's first
    stage."""
    return [
        {
            "messages": [
                chat["messages"][0],
                {
                    "role": "assistant",
                    "content": f"A handwritten {DIGIT_WORDS[int(chat['messages'][1]['content'][-2])]}.",
                },
            ],
            "images": chat["images"],
        }
        for chat in chats
    ]
