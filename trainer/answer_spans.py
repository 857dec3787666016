"""Where the assistant answers are in a rendered conversation, in time linear in its length.

An answer's span runs from the end of the conversation before it rendered with the generation prompt, to the end of
the conversation rendered through it: the answer and the end-of-turn marker the template writes after it. Rendering
those two prefixes for every answer costs the square of the conversation's length (on two busy CPU cores, 45 s for
1,200 turns, where this takes 0.2 s). So the prefixes are rendered for the first and the last answer only. Every
answer's span then starts the same distance after the end of the message before it, and ends the same distance
after the end of its own text, as one rendering with the message texts marked shows; the text at those places is
checked against the first and last answers'. A template that does not write message texts as they are, or writes
something else around some answer, falls back to rendering both prefixes of every answer.
"""

from collections.abc import Callable

# Private-use characters around each message text in the marked rendering; a conversation holding them is rendered
# prefix by prefix instead.
_OPEN, _CLOSE = "\ue000", "\ue001"

# render(messages, add_generation_prompt) -> the rendered text, each image's placeholders expanded
Render = Callable[[list[dict], bool], str]


def answer_spans(
    messages: list[dict], text: str, render: Render, expand: Callable[[str], str], where: str
) -> list[tuple[int, int]]:
    """[start, end) of each assistant answer in `text`, the whole conversation rendered (by `render`); `expand`
    expands the placeholders of a message text as `render` does. Raises ValueError, naming `where`, for a
    conversation that opens with an answer or a template whose prefixes are not prefixes of the whole conversation."""
    answers = [turn for turn, message in enumerate(messages) if message["role"] == "assistant"]
    if answers and answers[0] == 0:
        raise ValueError(f"{where}: the conversation opens with an assistant turn; nothing prompts it.")
    bounds = _message_bounds(messages, text, render, expand)
    spans = None
    if bounds is not None and len({messages[turn - 1]["role"] for turn in answers}) == 1:
        spans = _spans_between_bounds(messages, answers, text, bounds, render, where)
    return spans if spans is not None else [_rendered_span(messages, turn, text, render, where) for turn in answers]


def _spans_between_bounds(
    messages: list[dict], answers: list[int], text: str, bounds: list[int], render: Render, where: str
) -> list[tuple[int, int]] | None:
    """Each answer's span at the distances from `bounds` that the first and the last answer's rendered spans have,
    with the same text there; None where they differ."""
    around = {
        _around(text, bounds, turn, _rendered_span(messages, turn, text, render, where))
        for turn in {answers[0], answers[-1]}
    }
    if len(around) != 1 or None in around:
        return None
    ((before, after),) = around
    spans = []
    for turn in answers:
        start, end = bounds[turn - 1] + len(before), bounds[turn] + len(after)
        if text[bounds[turn - 1] : start] != before or text[bounds[turn] : end] != after:
            return None
        spans.append((start, end))
    return spans


def _rendered_span(messages: list[dict], turn: int, text: str, render: Render, where: str) -> tuple[int, int]:
    prefix, through = render(messages[:turn], True), render(messages[: turn + 1], False)
    if not (text.startswith(prefix) and text.startswith(through)):
        raise ValueError(
            f"{where}: the chat template is not prefix-consistent at message {turn}: rendering the messages "
            "before it (with the generation prompt) or through it does not give a prefix of the whole "
            "conversation, so its answer cannot be located."
        )
    return len(prefix), len(through)


def _around(text: str, bounds: list[int], turn: int, span: tuple[int, int]) -> tuple[str, str] | None:
    """The text between the message before answer `turn` and its span, and between its text and its span's end."""
    start, end = span
    if start < bounds[turn - 1] or end < bounds[turn]:
        return None
    return text[bounds[turn - 1] : start], text[bounds[turn] : end]


def _message_bounds(messages: list[dict], text: str, render: Render, expand: Callable[[str], str]) -> list[int] | None:
    """Where each message's text ends in `text`, from one rendering with every message text marked; None when the
    template does not write each text once, in order and unchanged."""
    contents = [message["content"] for message in messages]
    if not all(isinstance(content, str) for content in contents) or _OPEN in text or _CLOSE in text:
        return None
    marked = [{**message, "content": f"{_OPEN}{message['content']}{_CLOSE}"} for message in messages]
    try:
        rendered = render(marked, False)
    except ValueError:
        return None  # a template that reads the texts, and refuses the marked ones
    pieces = rendered.split(_OPEN)
    if len(pieces) != len(messages) + 1 or "".join(pieces).replace(_CLOSE, "") != text:
        return None
    bounds, position = [], len(pieces[0])
    for piece, content in zip(pieces[1:], contents, strict=True):
        written, closed, rest = piece.partition(_CLOSE)
        if not closed or _CLOSE in rest or written != expand(content):
            return None
        bounds.append(position + len(written))
        position += len(written) + len(rest)
    return bounds
