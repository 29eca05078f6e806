"""The harmony parser on hand-written token sequences."""

from __future__ import annotations

import pytest

from helpers import harmony_ids
from unified_harmony import FINAL_CHANNEL_PREFIX, HarmonyStreamParser, HarmonyTokenIds, parse_reply


@pytest.fixture(scope="module")
def token_ids(llm_tokenizer) -> HarmonyTokenIds:
    return HarmonyTokenIds.from_tokenizer(llm_tokenizer)


@pytest.fixture(scope="module")
def decode(llm_tokenizer):
    return lambda ids: llm_tokenizer.decode(ids, skip_special_tokens=True)


def parse(text: str, tokenizer, token_ids, decode):
    return parse_reply(harmony_ids(tokenizer, text), token_ids, decode)


def test_token_ids_match_tokenizer(token_ids, llm_tokenizer):
    for field, text in (("start", "<|start|>"), ("end", "<|end|>"), ("message", "<|message|>"),
                        ("channel", "<|channel|>"), ("return_", "<|return|>"), ("call", "<|call|>")):  # fmt: skip
        assert getattr(token_ids, field) == llm_tokenizer.convert_tokens_to_ids(text)


def test_token_ids_reject_qwen_tokenizer(vlm_processor):
    with pytest.raises(ValueError, match="harmony tokens"):
        HarmonyTokenIds.from_tokenizer(vlm_processor.tokenizer)


def test_parse_normal_reply(llm_tokenizer, token_ids, decode):
    result = parse(
        "<|channel|>analysis<|message|>The user asks about a cat.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>It is a cat.<|return|>",
        llm_tokenizer, token_ids, decode,
    )  # fmt: skip
    assert result.final_text(decode) == "It is a cat."
    assert result.reasoning_text(decode) == "The user asks about a cat."
    assert result.stop == "return"
    assert result.final_complete
    assert [m.channel for m in result.messages] == ["analysis", "final"]


def test_parse_missing_final(llm_tokenizer, token_ids, decode):
    result = parse("<|channel|>analysis<|message|>Thinking about it.<|end|>", llm_tokenizer, token_ids, decode)
    assert not result.has_final
    assert result.final_text(decode) == ""
    assert result.stop is None


def test_parse_truncated_analysis(llm_tokenizer, token_ids, decode):
    result = parse("<|channel|>analysis<|message|>Thinking about", llm_tokenizer, token_ids, decode)
    assert result.messages[0].closed_by is None
    assert result.reasoning_text(decode) == "Thinking about"
    assert not result.has_final


def test_parse_truncated_final(llm_tokenizer, token_ids, decode):
    result = parse(
        "<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>final<|message|>The answer is",
        llm_tokenizer, token_ids, decode,
    )  # fmt: skip
    assert result.final_text(decode) == "The answer is"
    assert result.has_final
    assert not result.final_complete


def test_parse_several_channels(llm_tokenizer, token_ids, decode):
    result = parse(
        "<|channel|>analysis<|message|>first<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>note<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>second<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Done.<|return|>",
        llm_tokenizer, token_ids, decode,
    )  # fmt: skip
    assert [m.channel for m in result.messages] == ["analysis", "commentary", "analysis", "final"]
    assert result.reasoning_text(decode) == "first\n\nsecond"
    assert result.final_text(decode) == "Done."
    assert "note" not in result.final_text(decode)


def test_parse_tool_call(llm_tokenizer, token_ids, decode):
    result = parse(
        "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{\"q\": 1}<|call|>",
        llm_tokenizer, token_ids, decode,
    )  # fmt: skip
    assert result.stop == "call"
    assert result.messages[0].channel == "commentary"
    assert not result.has_final


def test_parse_ignores_tokens_after_return(llm_tokenizer, token_ids, decode):
    result = parse(
        "<|channel|>final<|message|>Yes.<|return|><|start|>assistant<|channel|>final<|message|>No.",
        llm_tokenizer, token_ids, decode,
    )  # fmt: skip
    assert result.final_text(decode) == "Yes."


def test_stream_parser_flags_final_tokens(llm_tokenizer, token_ids, decode):
    ids = harmony_ids(
        llm_tokenizer,
        "<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>Shown.<|return|>",
    )
    parser = HarmonyStreamParser(token_ids, decode)
    passed = [token for token in ids if parser.feed(token)]
    assert decode(passed) == "Shown."
    assert parser.done


def test_stream_parser_start_final_continues_answer(llm_tokenizer, token_ids, decode):
    parser = HarmonyStreamParser(token_ids, decode)
    parser.feed_many(harmony_ids(llm_tokenizer, "<|channel|>analysis<|message|>long thought"))
    parser.start_final()
    passed = [t for t in harmony_ids(llm_tokenizer, "Forced answer.<|return|>") if parser.feed(t)]
    assert decode(passed) == "Forced answer."
    assert parser.result().final_text(decode) == "Forced answer."


def test_final_prefix_closes_analysis(llm_tokenizer, token_ids, decode):
    text = "<|channel|>analysis<|message|>cut off" + FINAL_CHANNEL_PREFIX + "Rescued.<|return|>"
    result = parse(text, llm_tokenizer, token_ids, decode)
    assert result.messages[0].closed_by == "end"
    assert result.final_text(decode) == "Rescued."
