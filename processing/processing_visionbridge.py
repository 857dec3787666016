"""VisionBridgeProcessor: the vision tower's image processor plus the LLM's tokenizer.

Text carries one `<image>` per image; the processor expands each to `image_seq_length` placeholder tokens, the
number the model's config fixes for its encoder and connector. The processor takes that number (and the aspect
ratio policy) from the config.json beside it, and keeps a copy in processor_config.json for folders without
one (an adapter's).
"""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin
from transformers.image_transforms import to_pil_image
from transformers.utils import cached_file

from ..compat import PROCESSORS_NAME_ATTRIBUTE_CLASSES
from .images import open_image, pad_to_square, shrink_for_square, stretch_to_square, to_rgb

# LLaVA-1.5's conversation format (Vicuna v1), for language models that bring no chat template of their own.
DEFAULT_CHAT_TEMPLATE = (
    "{{- messages[0]['content'] if messages[0]['role'] == 'system' else 'A chat between a curious human and an "
    "artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human\\'s "
    "questions.' -}}{{- ' ' -}}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + message['content'] + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# A chat template that looks at a content part's type renders image parts itself.
_READS_CONTENT_PARTS = re.compile(r"""\[\s*['"]type['"]\s*\]|\.type\b""")
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")


def _flatten_images(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4):
        return [image for item in images for image in _flatten_images(item)]  # a 4-D array is a batch of images
    return [images]


def _load_image(image, index: int) -> Image.Image:
    """A PIL image from a PIL image, a local path, or an array or tensor (HWC or CHW, as transformers' processors
    take them: floats in [0, 1] or integers in [0, 255])."""
    if isinstance(image, str) and re.match(r"^[a-z]+://", image):
        raise ValueError(f"Images are read from local files only, not fetched: download {image} and pass its path.")
    if isinstance(image, (str, Path)):
        image = open_image(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        image = to_pil_image(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"Image {index} is a {type(image).__name__}; expected a PIL image, a local path, or a numpy array or "
            "torch tensor."
        )
    if 0 in image.size:
        raise ValueError(f"Image {index} is {image.width}x{image.height} pixels: it has no pixels to see.")
    return image


class VisionBridgeProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    if PROCESSORS_NAME_ATTRIBUTE_CLASSES:
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        image_seq_length: int | None = None,
        image_aspect_ratio: str = "pad",
        image_start_token: str | None = None,
        image_end_token: str | None = None,
        **kwargs,
    ):
        if tokenizer is not None and image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) has no image token "
                f"{image_token!r}: add it with tokenizer.add_tokens([{image_token!r}], special_tokens=True) and resize "
                "the model's embeddings to len(tokenizer), or build the model with from_components, which does both."
            )
        self.image_token = image_token
        # `bind_config` sets them from the model config; an adapter folder's processor brings its own copy.
        self.image_seq_length = image_seq_length
        self.image_aspect_ratio = image_aspect_ratio
        self.image_start_token = image_start_token  # set under the config's mm_use_im_start_end
        self.image_end_token = image_end_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def tokenizer_adds_special_tokens(self) -> bool:
        """Whether a rendered chat is tokenized with the tokenizer's special tokens (its BOS): yes, unless the
        chat template writes `bos_token` itself. Training and inference both follow this one rule."""
        return "bos_token" not in self.chat_template

    def bind_config(self, config) -> "VisionBridgeProcessor":
        """Take placeholder count and aspect-ratio policy from the model config (a `VisionBridgeConfig`, or the
        values of its config.json); check the image token agrees."""
        if self.image_token_id != config.image_token_id:
            raise ValueError(
                f"The tokenizer maps {self.image_token!r} to id {self.image_token_id}, "
                f"but the model config expects image_token_id={config.image_token_id}."
            )
        self.image_seq_length = config.image_seq_length
        self.image_aspect_ratio = config.image_aspect_ratio
        boundary = config.mm_use_im_start_end
        convert = self.tokenizer.convert_ids_to_tokens
        self.image_start_token = convert(config.image_start_token_id) if boundary else None
        self.image_end_token = convert(config.image_end_token_id) if boundary else None
        return self

    def expand_image_tokens(self, text: str) -> str:
        """Each `<image>` -> its `image_seq_length` placeholders, between the start and end tokens where the model
        uses them. The training collator expands with this same function."""
        placeholders = self.image_token * self.image_seq_length
        if self.image_start_token is not None:
            placeholders = self.image_start_token + placeholders + self.image_end_token
        return text.replace(self.image_token, placeholders)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VisionBridgeProcessor":
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        found = cached_file(
            pretrained_model_name_or_path, "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if found is not None:  # read as JSON: the model config's classes (connectors, ...) are not needed here
            return processor.bind_config(SimpleNamespace(**json.loads(Path(found).read_text())))
        if processor.image_seq_length is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} has no model config.json and its processor_config.json no "
                "image_seq_length: load the processor from the model's folder or repo."
            )
        return processor

    def preprocess_images(self, images: list) -> torch.Tensor:
        """PIL images (any mode), paths, arrays or tensors -> pixel_values [N, 3, H, W]."""
        images = [shrink_for_square(to_rgb(_load_image(image, index))) for index, image in enumerate(images)]
        if self.image_aspect_ratio == "pad":
            fill = tuple(int(255 * mean) for mean in self.image_processor.image_mean)
            images = [pad_to_square(image, fill) for image in images]
        else:
            images = [stretch_to_square(image) for image in images]
        # Said outright: guessed from the array shape, a 1x1 or 3x3 RGB image would be read as channels-first.
        return self.image_processor(images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """text: a string or a list, with one `<image>` per image; images: a PIL image or path, a list of them in
        reading order across the batch, or one list per text. Returns input_ids/attention_mask [B, T] and
        pixel_values [N, 3, H, W]; tokenizer arguments (padding, padding_side, truncation, ...) pass through."""
        if self.image_seq_length is None:
            raise ValueError("The processor is not bound to a model config; call bind_config(model.config).")
        images = _flatten_images(images)
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            counts = [sample.count(self.image_token) for sample in texts]
            if sum(counts) != len(images):
                raise ValueError(
                    f"The text holds {sum(counts)} {self.image_token} placeholders (per text: {counts}) "
                    f"but {len(images)} images were given."
                )
            expanded = [self.expand_image_tokens(sample) for sample in texts]
            kwargs.setdefault("padding", len(expanded) > 1)
            kwargs.setdefault("padding_side", "left")  # generation; the training collator pads right itself
            kwargs.setdefault("return_token_type_ids", False)
            kwargs.setdefault("return_tensors", "pt")
            encoding = self.tokenizer(expanded, **kwargs)
            self._check_placeholders(encoding["input_ids"], counts)
            data.update(encoding)
        if images:
            data["pixel_values"] = self.preprocess_images(images)
        return BatchFeature(data)

    def _check_placeholders(self, input_ids, counts: list[int]) -> None:
        """Truncation must not have cut into an image's placeholders."""
        for index, (row, count) in enumerate(zip(input_ids, counts, strict=True)):
            found = sum(1 for token in list(row) if int(token) == self.image_token_id)
            if found != count * self.image_seq_length:
                raise ValueError(
                    f"Text {index} keeps {found} of its {count * self.image_seq_length} image placeholder tokens "
                    "after tokenization: truncation cut into an image. Raise max_length or shorten the text."
                )

    def apply_chat_template(
        self,
        conversation: list[dict],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        continue_final_message: bool = False,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render chat messages whose content is a string or a list of `{"type": "text", "text": ...}` and
        `{"type": "image"[, "image": PIL image or path]}` parts. A template written for such parts (llava-hf's)
        gets them as they are; a text-only one (an LLM's own, or LLaVA-1.5's format when the LLM has none) gets
        the parts joined by newlines, each image as `<image>` where it stands (LLaVA puts it first). With
        tokenize=True, returns the processor's output (a dict, as with return_dict=True) for the rendered text
        and the images found in the messages. `continue_final_message` and `processor_kwargs` (tokenizer arguments,
        as transformers 5's image-text-to-text pipeline passes them) are read as transformers reads them."""
        images = [
            part.get("image", part.get("path", part.get("url")))
            for message in conversation
            if not isinstance(message["content"], str)
            for part in message["content"]
            if part["type"] == "image"
        ]
        if not _READS_CONTENT_PARTS.search(self.chat_template):
            conversation = [{**message, "content": self._as_text(message)} for message in conversation]
        prompt = self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
        )
        if not tokenize:
            return prompt
        images = [image for image in images if image is not None]
        kwargs.pop("return_dict", None)
        kwargs.update(processor_kwargs or {})
        return self(images=images or None, text=prompt, add_special_tokens=self.tokenizer_adds_special_tokens, **kwargs)

    def _as_text(self, message: dict) -> str:
        if isinstance(message["content"], str):
            return message["content"]
        parts = []
        for part in message["content"]:
            if part["type"] not in ("image", "text"):
                raise ValueError(f"Unsupported content part type {part['type']!r} in a {message['role']} turn.")
            parts.append(self.image_token if part["type"] == "image" else part["text"])
        return "\n".join(parts)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With visionbridge installed, the folder is written whole, loadable on both transformers lines, with the
        flat remote code, and uploaded once complete under push_to_hub. Run as a saved folder's remote code without
        visionbridge, transformers' own save."""
        try:
            from visionbridge.processing.saving import save_processor
        except ImportError:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return save_processor(self, save_directory, *args, **kwargs)
