"""User inputs of `generate` and `chat`: validation, chat parsing, and the stage-1 jobs they produce.

Nothing here calls a model, so the same checks and jobs serve any engine that runs the two stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

try:
    from .unified_cache import description_key
    from .unified_images import image_fingerprint, load_image, load_video
    from .unified_prompts import VisualDescription, build_answer_messages, vision_prompt_text
except ImportError:  # imported as a top-level module, with the model folder on sys.path
    from unified_cache import description_key
    from unified_images import image_fingerprint, load_image, load_video
    from unified_prompts import VisualDescription, build_answer_messages, vision_prompt_text


@dataclass
class Request:
    """One question with its visual inputs, after validation (inputs not yet loaded)."""

    question: str
    images: list
    video: object | None = None


@dataclass
class DescriptionJob:
    """One stage-1 description to produce: its images or video, prompt, cache key and result."""

    request: int
    label: str
    prompt: str
    images: list = field(default_factory=list)
    video: object | None = None
    key: str = ""
    text: str | None = None
    tokens: int = 0
    cached: bool = False


def check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")


def check_non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")


# Valid ranges of the sampling settings, with their descriptions for error messages. transformers
# builds no top-p processor for top_p >= 1, so it never checks a value such as 2.0 itself.
_SAMPLING_RANGES = {
    "temperature": (lambda v: v > 0, "> 0 (1.0 leaves the scores as they are)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1.0 turns nucleus sampling off)"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1] (0 turns it off)"),
    "top_k": (lambda v: v >= 0 and float(v).is_integer(), "a whole number >= 0 (0 turns it off)"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1.0 turns it off)"),
}


def check_sampling_settings(settings: dict, where: str) -> None:
    """Reject out-of-range sampling settings in `settings`; `where` names their source in the message."""
    for name, (valid, expected) in _SAMPLING_RANGES.items():
        value = settings.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name} in {where} must be a number {expected}, got {type(value).__name__} ({value!r:.80}).")
        if value != value or not valid(value):  # Only NaN differs from itself.
            raise ValueError(f"{name} in {where} must be {expected}, got {value}.")


def check_question(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} ({value!r:.80}).")
    if not value.strip():
        raise ValueError(f"{name} is empty or whitespace ({value!r:.80}); ask a question.")
    return value


def image_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def normalize_requests(images, text_prompt, videos) -> tuple[list[Request], bool]:
    """Turn generate's arguments into one Request per question, plus True when they were a batch."""
    if text_prompt is None:
        raise TypeError("generate() needs text_prompt: the question to answer.")
    if isinstance(text_prompt, (list, tuple)):
        if not text_prompt:
            raise ValueError("text_prompt is an empty list; pass at least one question.")
        questions = [check_question(q, f"text_prompt[{i}]") for i, q in enumerate(text_prompt)]
        per_prompt_images = _per_prompt(images, len(questions), "images", "None, an image, or a list of images")
        per_prompt_videos = _per_prompt(videos, len(questions), "videos", "None or a video")
        requests = [Request(q, image_list(i), v) for q, i, v in zip(questions, per_prompt_images, per_prompt_videos)]
        return requests, True
    return [Request(check_question(text_prompt, "text_prompt"), image_list(images), videos)], False


def _per_prompt(value, count: int, name: str, entry: str) -> list:
    """Check that a batch argument has one entry per prompt; None means none for every prompt."""
    if value is None:
        return [None] * count
    if not isinstance(value, (list, tuple)) or len(value) != count:
        found = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(
            f"For a batch of {count} prompts, {name} must be a list of {count} entries ({entry} per prompt); "
            f"got {found}."
        )
    return list(value)


def chat_option_kwargs(kwargs: dict) -> dict:
    names = ("reasoning_effort", "answer_reserve_tokens", "description_mode", "multi_image_mode", "vision_prompt", "description_max_new_tokens",
             "vision_generation_kwargs", "max_image_pixels", "max_image_bytes", "use_description_cache", "seed")  # fmt: skip
    return {name: kwargs.pop(name) for name in names if name in kwargs}


def parse_chat(messages) -> list[dict]:
    """Validate OpenAI-style messages into turns {"role", "text", "images"} without changing them."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a non-empty list of dicts, got {type(messages).__name__}.")
    if not messages:
        raise ValueError("messages is empty; pass at least one user message.")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.120}.")
        role = message["role"]
        if role not in ("system", "developer", "user", "assistant"):
            raise ValueError(f"messages[{index}] has role {role!r}; use system, developer, user or assistant.")
        texts, images = [], []
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"messages[{index}]['content'] must be a string or a list of parts, got {type(content).__name__}.")
        for part_index, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{index}]['content'][{part_index}]"
            if kind == "text":
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise TypeError(f"{where}['text'] must be a string, got {type(text).__name__} ({text!r:.80}).")
                texts.append(text)
            elif kind in ("image", "image_url", "input_image") and role == "user":
                source = part.get("image", part.get("url"))
                if kind == "image_url":
                    source = part.get("image_url")
                    if isinstance(source, dict):
                        source = source.get("url")
                if source is None:
                    raise ValueError(f"{where} is an image part without an image.")
                images.append(source)
            elif kind in ("image", "image_url", "input_image"):
                raise ValueError(
                    f"{where}: images are accepted in user messages only, found one in a message with role {role!r}."
                )
            else:
                raise ValueError(f"{where} has type {kind!r}; use 'text', 'image' or 'image_url'.")
        turns.append({"role": role, "text": "\n".join(texts), "images": images})
    if turns[-1]["role"] != "user":
        raise ValueError(f"The last message must come from the user, got role {turns[-1]['role']!r}.")
    for index, turn in enumerate(turns):
        if turn["role"] == "user" and not turn["text"].strip() and not turn["images"]:
            raise ValueError(f"messages[{index}] is a user message with no text and no image.")
    if not turns[-1]["text"].strip():
        raise ValueError(
            f"messages[{len(turns) - 1}], the last user message, has no text; ask a question about the image."
        )
    return turns


def chat_conversation(turns: list[dict], jobs: list[DescriptionJob], developer_prompt: str) -> list[dict]:
    """Stage-2 messages: user turns carry their images' descriptions, system text joins the developer turn."""
    instructions = [turn["text"] for turn in turns if turn["role"] in ("system", "developer") and turn["text"].strip()]
    if jobs:
        instructions.insert(0, developer_prompt)
    conversation = [{"role": "developer", "content": "\n\n".join(instructions)}] if instructions else []
    user_index = 0
    for turn in turns:
        if turn["role"] == "user":
            descriptions = [VisualDescription(job.label, job.text or "") for job in jobs if job.request == user_index]
            user_index += 1
            messages = build_answer_messages(turn["text"], descriptions, None)
            conversation.append(messages[-1])
        elif turn["role"] == "assistant":
            conversation.append({"role": "assistant", "content": turn["text"]})
    return conversation


def description_jobs(
    requests: list[Request],
    *,
    vision_prompt: str,
    description_mode: str,
    multi_image_mode: str,
    max_pixels: int | None,
    max_bytes: int,
    settings: dict,
) -> list[DescriptionJob]:
    """Load every image and video and make one description job per image, image set or video.

    `settings` are the stage-1 settings that shape a description; they go into its cache key.
    """
    jobs = []
    for index, request in enumerate(requests):
        question = request.question if description_mode == "question" else None
        images = [load_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
                  for image in request.images]  # fmt: skip
        if images and (multi_image_mode == "each" or len(images) == 1):
            for number, image in enumerate(images, start=1):
                label = f"Image {number}" if len(images) > 1 else "Image"
                prompt = vision_prompt_text(vision_prompt, question, "image")
                jobs.append(DescriptionJob(index, label, prompt, images=[image]))
        elif images:
            prompt = vision_prompt_text(vision_prompt, question, "images")
            jobs.append(DescriptionJob(index, f"Images 1-{len(images)}", prompt, images=images))
        if request.video is not None:
            clip = load_video(request.video, max_pixels=max_pixels)
            prompt = vision_prompt_text(vision_prompt, question, "video")
            jobs.append(DescriptionJob(index, "Video", prompt, video=clip))
    for job in jobs:
        if job.video is not None:
            fingerprints = [video_fingerprint(job.video)]
        else:
            fingerprints = [image_fingerprint(image) for image in job.images]
        job.key = description_key(fingerprints, job.prompt, settings)
    return jobs


def video_fingerprint(clip) -> str:
    digest = hashlib.sha256(f"{clip.frames.shape}:{clip.fps}:{clip.frame_indices}".encode())
    digest.update(clip.frames.tobytes())
    return digest.hexdigest()
