"""The harmony response format of gpt-oss: its special tokens and a parser that finds the final answer.

A gpt-oss reply is a run of messages, each `<|start|>{role}<|channel|>{channel}<|message|>{text}`
closed by `<|end|>`, or by `<|return|>` / `<|call|>` when the turn ends. Reasoning goes to the
`analysis` channel and the answer to `final`. The parser works on token ids and a decode function
only, so it serves transformers' `generate` and any server that returns token ids alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Appended to a reply that ran out of budget inside its reasoning: it closes the open message and
# opens the final channel, so that generation continues with the answer.
FINAL_CHANNEL_PREFIX = "<|end|><|start|>assistant<|channel|>final<|message|>"

_TOKEN_STRINGS = {
    "start": "<|start|>",
    "end": "<|end|>",
    "message": "<|message|>",
    "channel": "<|channel|>",
    "constrain": "<|constrain|>",
    "return_": "<|return|>",
    "call": "<|call|>",
    "end_of_text": "<|endoftext|>",
}


@dataclass(frozen=True)
class HarmonyTokenIds:
    """Ids of the harmony special tokens in one tokenizer."""

    start: int
    end: int
    message: int
    channel: int
    constrain: int
    return_: int
    call: int
    end_of_text: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> HarmonyTokenIds:
        """Look the tokens up in `tokenizer`; raise ValueError when it is not a harmony tokenizer."""
        # Token by token, because get_vocab() builds a dict of all 200k entries on every call.
        texts = list(_TOKEN_STRINGS.values())
        found = tokenizer.convert_tokens_to_ids(texts)
        vocab = {text: token_id for text, token_id in zip(texts, found)
                 if token_id is not None and tokenizer.convert_ids_to_tokens(token_id) == text}  # fmt: skip
        missing = [text for text in texts if text not in vocab]
        if missing:
            name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
            raise ValueError(
                f"llm_tokenizer {name!r} lacks the harmony tokens {missing}: pass the gpt-oss tokenizer "
                "(the folder's llm_tokenizer/), not the vision model's."
            )
        return cls(**{key: vocab[text] for key, text in _TOKEN_STRINGS.items()})


@dataclass
class HarmonyMessage:
    """One message of a reply.

    `channel` is the first word after `<|channel|>` ("analysis", "commentary", "final") or None when
    the header had none. `closed_by` is "end", "return", "call" or "end_of_text", and None when the
    token stream stopped inside the message.
    """

    role: str
    channel: str | None
    content_ids: list[int] = field(default_factory=list)
    closed_by: str | None = None


@dataclass
class HarmonyParse:
    """A parsed reply.

    `final_ids` and `reasoning_ids` are the content ids of its final-channel and analysis-channel
    messages. `stop` is the kind of token that ended the turn, or None when the reply was cut off.
    """

    messages: list[HarmonyMessage]
    final_ids: list[int]
    reasoning_ids: list[int]
    has_final: bool
    final_complete: bool
    stop: str | None

    def final_text(self, decode: Callable[[list[int]], str]) -> str:
        return decode(self.final_ids).strip()

    def reasoning_text(self, decode: Callable[[list[int]], str]) -> str:
        analysis = [m for m in self.messages if m.channel == "analysis"]
        return "\n\n".join(decode(m.content_ids).strip() for m in analysis).strip()


_HEADER, _CHANNEL, _CONTENT, _BETWEEN, _DONE = "header", "channel", "content", "between", "done"


class HarmonyStreamParser:
    """Parse a reply token by token.

    The stream is expected to start right after the prompt's `<|start|>assistant`, that is inside a
    header. `feed` returns True for each token that belongs to the text of a final-channel message,
    which is what a streamer may show to the user. Tokens after the turn ends are ignored.
    """

    def __init__(self, token_ids: HarmonyTokenIds, decode: Callable[[list[int]], str], role: str = "assistant"):
        self._ids = token_ids
        self._decode = decode
        self.messages: list[HarmonyMessage] = []
        self.stop: str | None = None
        self._state = _HEADER
        self._role_ids: list[int] = []
        self._channel_ids: list[int] = []
        self._role_prefix = role
        self._current: HarmonyMessage | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def start_final(self) -> None:
        """Continue as if `FINAL_CHANNEL_PREFIX` had just been read: the next tokens are the answer."""
        self._close("end")
        self._current = HarmonyMessage(role="assistant", channel="final")
        self.messages.append(self._current)
        self.stop = None
        self._state = _CONTENT

    def feed_many(self, ids: Iterable[int]) -> None:
        for token_id in ids:
            self.feed(int(token_id))

    def feed(self, token_id: int) -> bool:
        ids = self._ids
        if self._state == _DONE:
            return False
        if token_id in (ids.return_, ids.call, ids.end_of_text):
            kind = {ids.return_: "return", ids.call: "call", ids.end_of_text: "end_of_text"}[token_id]
            self._close(kind)
            self.stop = kind
            self._state = _DONE
            return False
        if token_id == ids.end:
            self._close("end")
            self._state = _BETWEEN
            return False
        if token_id == ids.start:
            self._close("end")
            self._role_prefix, self._role_ids, self._channel_ids = "", [], []
            self._state = _HEADER
            return False
        if token_id == ids.channel and self._state in (_HEADER, _CHANNEL):
            self._state = _CHANNEL
            return False
        if token_id == ids.message and self._state in (_HEADER, _CHANNEL):
            self._open_message()
            return False
        if token_id == ids.constrain:
            return False

        if self._state == _HEADER:
            self._role_ids.append(token_id)
        elif self._state == _CHANNEL:
            self._channel_ids.append(token_id)
        elif self._state == _CONTENT and self._current is not None:
            self._current.content_ids.append(token_id)
            return self._current.channel == "final"
        # Text between messages breaks the format; it belongs to no channel and is dropped.
        return False

    def result(self) -> HarmonyParse:
        final = [m for m in self.messages if m.channel == "final"]
        reasoning = [m for m in self.messages if m.channel == "analysis"]
        return HarmonyParse(
            messages=list(self.messages),
            final_ids=[token for message in final for token in message.content_ids],
            reasoning_ids=[token for message in reasoning for token in message.content_ids],
            has_final=bool(final),
            final_complete=bool(final) and all(message.closed_by is not None for message in final),
            stop=self.stop,
        )

    def _open_message(self) -> None:
        role = (self._role_prefix + self._decode(self._role_ids)).strip()
        channel_text = self._decode(self._channel_ids).strip()
        channel = channel_text.split()[0] if channel_text else None
        self._current = HarmonyMessage(role=role.split()[0] if role else "assistant", channel=channel)
        self.messages.append(self._current)
        self._state = _CONTENT

    def _close(self, kind: str) -> None:
        if self._current is not None and self._current.closed_by is None:
            self._current.closed_by = kind
        self._current = None


def parse_reply(ids: Iterable[int], token_ids: HarmonyTokenIds, decode: Callable[[list[int]], str]) -> HarmonyParse:
    """Parse the generated ids of one reply (the tokens after the prompt's `<|start|>assistant`)."""
    parser = HarmonyStreamParser(token_ids, decode)
    parser.feed_many(ids)
    return parser.result()
