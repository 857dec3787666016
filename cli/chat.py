"""`visionbridge chat`: a multi-turn conversation about images in the terminal, answers streamed as generated.

    visionbridge chat outputs/digits/base --adapter outputs/digits --image digit.png
    > What digit is this?

Inside the session: `/image PATH` shows the model another image with the next question, `/reset` forgets the
conversation and its images, `/quit` (or end of input) leaves.
"""

import argparse
import sys

from PIL import Image
from transformers import TextStreamer

from ..modeling.chat import respond
from .common import load_for_inference


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionbridge chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="VisionBridge model folder or Hub repo (the base, when --adapter is given)")
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo trained on the model")
    parser.add_argument("--image", nargs="+", default=[], help="image file(s) shown with the first question")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 answers greedily")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow checkpoints that ship their own code")
    return parser


class ChatSession:
    """The conversation so far (`messages`) and the images waiting for the next question (`pending`)."""

    def __init__(self, model, processor, max_new_tokens: int = 256, temperature: float = 0.0):
        self.model, self.processor = model, processor
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            self.generation["temperature"] = temperature
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.pending: list[Image.Image] = []

    def add_image(self, path: str) -> None:
        with Image.open(path) as image:
            self.pending.append(image.convert("RGB"))

    def ask(self, question: str, stream=None) -> str:
        """Answer `question` about the images added since the last question, with the whole history as context;
        the answer is streamed to `stream` (a text file) as it is generated."""
        content = [{"type": "image", "image": image} for image in self.pending]
        self.messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        self.pending = []
        streamer = _Streamer(self.processor.tokenizer, stream) if stream is not None else None
        answer = respond(self.model, self.processor, self.messages, **self.generation, streamer=streamer)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return answer


class _Streamer(TextStreamer):
    """A TextStreamer that writes to a given stream instead of stdout."""

    def __init__(self, tokenizer, stream):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, processor = load_for_inference(args.model, args.adapter, args.trust_remote_code, args.dtype)
    session = ChatSession(model, processor, args.max_new_tokens, args.temperature)
    for path in args.image:
        session.add_image(path)
    interactive = sys.stdin.isatty()
    print("Ask about the images; /image PATH adds one, /reset starts over, /quit leaves.")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            break
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            session.reset()
            print("[history and images cleared]")
        elif line.startswith("/image"):
            path = line.removeprefix("/image").strip()
            try:
                session.add_image(path)
                print(f"[image {path} will be shown with the next question]")
            except OSError as error:
                print(f"[cannot open {path!r}: {error}]")
        else:
            print("assistant: ", end="", flush=True)
            session.ask(line, stream=sys.stdout)
