"""Prompts of the two stages, built as chat messages that any engine can render with the models' templates.

Stage 1 asks the vision model for structured text about one image, a set of images or a video.
Stage 2 gives gpt-oss that text and the user's question. Nothing here calls a model.
"""

from __future__ import annotations

from dataclasses import dataclass

# Question-aware by default: Prism (arXiv 2406.14544) measured 4 to 6 more MMStar points for
# descriptions written with the question in view than for generic ones.
_DESCRIPTION_SECTIONS = """\
Write these sections:
1. Overview: the scene and its main subject, in one or two sentences.
2. Objects: every distinct object, person or animal, with counts, colours, sizes, materials and \
position in the frame.
3. Text: all visible text, copied verbatim in quotes; write "none" if there is none.
4. Layout: spatial relations between the objects and the overall composition."""

DEFAULT_VISION_PROMPT = f"""\
Describe this {{visual}} for a language model that cannot see it and must answer a user's question from \
your text alone. The user's question is:
"{{question}}"

{_DESCRIPTION_SECTIONS}
5. For the question: every visible detail that bears on the question, and what is unclear or hidden.

Report only what is visible. Do not answer the question yourself."""

GENERIC_VISION_PROMPT = f"""\
Describe this {{visual}} for a language model that cannot see it.

{_DESCRIPTION_SECTIONS}

Report only what is visible."""

DEFAULT_DEVELOPER_PROMPT = """\
You answer questions about images that you cannot see. A vision model looked at each image and \
wrote the description in the user's message; treat it as your only view of the image. Rely on it, \
say so when it lacks what the question needs, and never invent details it does not contain. \
Answer the question directly."""

DESCRIPTION_MODES = ("question", "generic")


@dataclass(frozen=True)
class VisualDescription:
    """Stage-1 text for one image, several images described together, or one video."""

    label: str
    text: str


def vision_prompt_text(template: str, question: str | None, visual: str = "image") -> str:
    """Fill a stage-1 prompt template; `{question}` and `{visual}` are its placeholders."""
    return template.replace("{visual}", visual).replace("{question}", (question or "").strip())


def build_vision_messages(prompt_text: str, images: int = 0, videos: int = 0) -> list[dict]:
    """Build one user turn with `images` image parts or `videos` video parts, then the prompt."""
    parts = [{"type": "image"} for _ in range(images)] + [{"type": "video"} for _ in range(videos)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": prompt_text}]}]


def format_descriptions(descriptions: list[VisualDescription]) -> str:
    """Join stage-1 descriptions under their labels, in the order the images were given."""
    return "\n\n".join(f"{d.label} description:\n{d.text.strip() or '(the vision model returned no text)'}"
                       for d in descriptions)  # fmt: skip


def build_user_message(question: str, descriptions: list[VisualDescription]) -> str:
    """Build the stage-2 user turn: descriptions first, then the question."""
    if not descriptions:
        return question
    return f"{format_descriptions(descriptions)}\n\nQuestion: {question}"


def build_answer_messages(
    question: str, descriptions: list[VisualDescription], developer_prompt: str | None
) -> list[dict]:
    """Stage-2 chat messages for one question; the developer turn is left out for text-only questions."""
    messages = []
    if descriptions and developer_prompt:
        messages.append({"role": "developer", "content": developer_prompt})
    messages.append({"role": "user", "content": build_user_message(question, descriptions)})
    return messages
