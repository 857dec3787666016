"""`visionbridge chat`: a multi-turn conversation about images in the terminal, answers streamed as generated.

    visionbridge chat outputs/digits/base --adapter outputs/digits --image digit.png
    > What digit is this?

Inside the session:
  /image PATH    add a picture: the model sees it with your next question, beside the earlier ones
  /replace PATH  put a picture in place of the last one (waiting, or already talked about)
  /reset         forget the conversation and its pictures
  /help          list these commands
  /quit          leave (end of input does too)
Any other line is a question. A line that cannot be answered gets a message, and the conversation goes on.
"""

import sys

from .usage import DTYPES, CommandParser, UsageError, local_image, model_source

SESSION_HELP = __doc__[__doc__.index("Inside the session:") :].strip()


def build_parser() -> CommandParser:
    parser = CommandParser("visionbridge chat", __doc__)
    parser.add_argument("model", help="VisionBridge model folder or Hub repo (the base, when --adapter is given)")
    parser.add_argument("--adapter", help="LoRA adapter folder or Hub repo trained on the model")
    parser.add_argument("--image", nargs="+", default=[], help="local image file(s) shown with the first question")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 answers greedily")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of the loaded weights")
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
        self.pending: list = []

    def add_image(self, path: str) -> None:
        """Show the image at `path` with the next question (UsageError if it cannot be read)."""
        self.pending.append(local_image(path, "/image"))

    def replace_image(self, path: str) -> None:
        """Put the image at `path` in place of the last one: a waiting one, else the last one of the conversation."""
        image = local_image(path, "/replace")
        if self.pending:
            self.pending[-1] = image
            return
        parts = [part for message in self.messages for part in message["content"] if part["type"] == "image"]
        if not parts:
            raise UsageError("there is no picture to replace yet; /image PATH adds one")
        parts[-1]["image"] = image

    def ask(self, question: str, stream=None) -> str:
        """Answer `question` about the images added since the last question, with the whole history as context;
        the answer is streamed to `stream` (a text file) as it is generated. If no answer comes (an error), the
        conversation and the waiting images stay as they were."""
        from ..modeling.chat import respond

        token = self.processor.image_token
        if token in question:
            raise UsageError(f"a question cannot hold {token}, the image placeholder; show pictures with /image PATH")
        content = [{"type": "image", "image": image} for image in self.pending]
        question_message = {"role": "user", "content": [*content, {"type": "text", "text": question}]}
        streamer = None
        if stream is not None:
            stream.write("assistant: ")
            streamer = _streamer(self.processor.tokenizer, stream)
        answer = respond(
            self.model, self.processor, [*self.messages, question_message], **self.generation, streamer=streamer
        )
        self.messages += [question_message, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.pending = []
        return answer


def _streamer(tokenizer, stream):
    """A TextStreamer that writes the answer to `stream` instead of stdout."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def handle(session: ChatSession, line: str, out=None) -> bool:
    """Run one line of the session, printing to `out` (default: stdout); False when it asks to leave. A line that
    fails prints why and changes nothing."""
    out = out if out is not None else sys.stdout
    command, _, rest = line.partition(" ")
    rest = rest.strip()
    try:
        if command == "/quit":
            return False
        if command == "/help":
            print(SESSION_HELP, file=out)
        elif command == "/reset":
            session.reset()
            print("[history and images cleared]", file=out)
        elif command in ("/image", "/replace"):
            if not rest:
                raise UsageError(f"{command} needs a path: {command} PATH")
            if command == "/image":
                session.add_image(rest)
                print(f"[image {rest} will be shown with the next question]", file=out)
            else:
                session.replace_image(rest)
                print(f"[image {rest} replaces the last picture]", file=out)
        elif command.startswith("/"):
            raise UsageError(f"unknown command {command}; /help lists the commands")
        else:
            session.ask(line, stream=out)
    except UsageError as error:
        print(f"[{error}]", file=out)
    except Exception as error:  # a failed answer must not end the session and lose the conversation
        print(f"\n[no answer: {type(error).__name__}: {error}; the conversation is kept]", file=out)
    return True


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model_source(args.model, "model")
    if args.adapter is not None:
        model_source(args.adapter, "--adapter", marker="adapter_config.json")

    from .. import register_auto_classes

    register_auto_classes()  # first: it imports the package's parts in the order they need
    from .common import load_for_inference

    images = [local_image(path, "--image") for path in args.image]
    model, processor = load_for_inference(args.model, args.adapter, args.trust_remote_code, args.dtype)
    session = ChatSession(model, processor, args.max_new_tokens, args.temperature)
    session.pending = images
    interactive = sys.stdin.isatty()
    print("Ask about the images; /help lists the commands (/image PATH, /replace PATH, /reset, /quit).")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line and not handle(session, line):
            break
