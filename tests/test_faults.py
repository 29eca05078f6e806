"""Bad input and faults: each table lists an input, the exception it must raise, and the words its message
must contain (the offending value and, where the code offers one, the fix)."""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from configuration_unified import DESCRIPTION_MODES, REASONING_EFFORTS
from helpers import ImageServer
from unified_folder import CODE_FILES, INDEX_NAME, FolderError
from unified_images import ImageLoadError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHORT = {"max_new_tokens": 4, "description_max_new_tokens": 4, "do_sample": False}
QUESTION = "What is shown?"


@pytest.fixture()
def forward_calls(model):
    """Names of the sub-models ("vlm", "llm") whose forward ran while the test ran."""
    calls = []
    handles = [
        part.register_forward_pre_hook(lambda module, args, name=name: calls.append(name))
        for name, part in (("vlm", model.vlm), ("llm", model.llm))
    ]
    yield calls
    for handle in handles:
        handle.remove()


def assert_mentions(message: str, fragments: list[str]) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# generate() arguments
# ---------------------------------------------------------------------------------------------

GENERATE_CASES = [
    pytest.param({"text_prompt": None}, TypeError, ["text_prompt"], id="prompt-none"),
    pytest.param({"text_prompt": ""}, ValueError, ["text_prompt", "''"], id="prompt-empty"),
    pytest.param({"text_prompt": "   "}, ValueError, ["text_prompt", "'   '"], id="prompt-blank"),
    pytest.param({"text_prompt": 123}, TypeError, ["text_prompt", "int", "123"], id="prompt-int"),
    pytest.param({"text_prompt": ["ok", 5]}, TypeError, ["text_prompt[1]", "int", "5"], id="prompt-list-int"),
    pytest.param({"text_prompt": []}, ValueError, ["text_prompt", "empty list"], id="prompt-list-empty"),
    pytest.param({"reasoning_effort": "extreme"}, ValueError, ["reasoning_effort", "'extreme'", str(REASONING_EFFORTS)],
                 id="effort-unknown"),
    pytest.param({"max_new_tokens": 0}, ValueError, ["max_new_tokens", "got 0"], id="budget-zero"),
    pytest.param({"max_new_tokens": -1}, ValueError, ["max_new_tokens", "got -1"], id="budget-negative"),
    pytest.param({"max_new_tokens": "10"}, TypeError, ["max_new_tokens", "str", "'10'"], id="budget-str"),
    pytest.param({"max_new_tokens": True}, TypeError, ["max_new_tokens", "bool", "True"], id="budget-bool"),
    pytest.param({"max_new_tokens": 2.5}, TypeError, ["max_new_tokens", "float", "2.5"], id="budget-float"),
    pytest.param({"description_max_new_tokens": 0}, ValueError, ["description_max_new_tokens", "got 0"],
                 id="description-budget-zero"),
    pytest.param({"text_prompt": ["a", "b"], "images": [None, None, None]}, ValueError, ["batch of 2", "got 3"],
                 id="batch-images-length"),
    pytest.param({"text_prompt": ["a", "b"], "videos": [None]}, ValueError, ["batch of 2", "videos", "got 1"],
                 id="batch-videos-length"),
    pytest.param({"images": object()}, TypeError, ["builtins.object", "Accepted"], id="image-object"),
    pytest.param({"images": 5}, TypeError, ["builtins.int", "Accepted"], id="image-int"),
    pytest.param({"multi_image_mode": "some"}, ValueError, ["multi_image_mode", "'some'", "'each'", "'together'"],
                 id="multi-image-mode"),
    pytest.param({"description_mode": "x"}, ValueError, ["description_mode", "'x'", str(DESCRIPTION_MODES)],
                 id="description-mode"),
    pytest.param({"vision_prompt": ""}, ValueError, ["vision_prompt", "''"], id="vision-prompt-empty"),
    pytest.param({"max_image_pixels": 0}, ValueError, ["max_image_pixels", "got 0"], id="pixels-zero"),
    pytest.param({"max_image_bytes": 0}, ValueError, ["max_image_bytes", "got 0"], id="bytes-zero"),
    pytest.param({"seed": "x"}, TypeError, ["seed", "str", "'x'"], id="seed-str"),
    pytest.param({"input_ids": torch.tensor([[1, 2]])}, TypeError, ["input_ids", "text_prompt"], id="reserved-kwarg"),
    pytest.param({"vision_generation_kwargs": {"max_new_tokens": 5}}, ValueError,
                 ["max_new_tokens", "description_max_new_tokens"], id="vision-kwargs-budget"),
    pytest.param({"vision_generation_kwargs": {"max_length": 5}}, ValueError,
                 ["max_length", "description_max_new_tokens"], id="vision-kwargs-max-length"),
    pytest.param({"vision_generation_kwargs": {"temprature": 0.5}}, ValueError, ["temprature"],
                 id="vision-kwargs-unknown"),
    pytest.param({"vision_generation_kwargs": "greedy"}, TypeError, ["vision_generation_kwargs", "str"],
                 id="vision-kwargs-str"),
    pytest.param({"max_length": 10}, ValueError, ["max_length", "max_new_tokens argument"], id="stage2-max-length"),
    pytest.param({"temprature": 0.5}, TypeError, ["temprature", "did you mean 'temperature'"], id="stage2-unknown"),
    pytest.param({"image": "photo.png"}, TypeError, ["'image'", "did you mean 'images'"], id="singular-image"),
    pytest.param({"text_prompt": ["a", "b"], "streamer": BaseStreamer()}, ValueError, ["streamer", "batch of 2"],
                 id="streamer-batch"),
    pytest.param({"generation_config": {"do_sample": False}}, TypeError,
                 ["generation_config", "GenerationConfig", "dict"], id="generation-config-dict"),
    pytest.param({"answer_reserve_tokens": -1}, ValueError, ["answer_reserve_tokens", "got -1"], id="reserve-negative"),
    pytest.param({"answer_reserve_tokens": "all"}, TypeError, ["answer_reserve_tokens", "str", "'all'"],
                 id="reserve-str"),
    pytest.param({"do_sample": True, "top_p": 2.0}, ValueError, ["top_p", "(0, 1]", "got 2.0"], id="top-p-above-one"),
    pytest.param({"do_sample": True, "top_p": 0.0}, ValueError, ["top_p", "(0, 1]", "got 0.0"], id="top-p-zero"),
    pytest.param({"do_sample": True, "temperature": -1.0}, ValueError, ["temperature", "> 0", "got -1.0"],
                 id="temperature-negative"),
    pytest.param({"do_sample": True, "temperature": float("nan")}, ValueError, ["temperature", "got nan"],
                 id="temperature-nan"),
    pytest.param({"do_sample": True, "temperature": "hot"}, TypeError, ["temperature", "str", "'hot'"],
                 id="temperature-str"),
    pytest.param({"do_sample": True, "top_k": -5}, ValueError, ["top_k", ">= 0", "got -5"], id="top-k-negative"),
    pytest.param({"do_sample": True, "top_k": 2.5}, ValueError, ["top_k", "whole number", "got 2.5"],
                 id="top-k-fraction"),
    pytest.param({"do_sample": True, "min_p": 1.5}, ValueError, ["min_p", "[0, 1]", "got 1.5"], id="min-p-above-one"),
    pytest.param({"repetition_penalty": 0}, ValueError, ["repetition_penalty", "> 0", "got 0"],
                 id="repetition-penalty-zero"),
    pytest.param({"vision_generation_kwargs": {"do_sample": True, "top_p": 1.5}}, ValueError,
                 ["top_p", "vision_generation_kwargs", "got 1.5"], id="vision-top-p"),
]


@pytest.mark.parametrize(("kwargs", "error", "fragments"), GENERATE_CASES)
def test_generate_rejects(model, forward_calls, kwargs, error, fragments):
    with pytest.raises(error) as raised:
        model.generate(**{"text_prompt": QUESTION, **SHORT, **kwargs})
    assert_mentions(str(raised.value), fragments)
    assert forward_calls == []


def test_sources_use_no_assert():
    # `python -O` strips assert statements, so an input check written as one would vanish.
    paths = [REPO_ROOT / "modeling_unified.py", REPO_ROOT / "configuration_unified.py",
             *sorted(REPO_ROOT.glob("unified_*.py"))]  # fmt: skip
    asserts = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        asserts += [f"{path.name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert len(paths) >= 3
    assert asserts == []


# ---------------------------------------------------------------------------------------------
# Processors of the wrong model
# ---------------------------------------------------------------------------------------------

PROCESSOR_CASES = [
    pytest.param("vlm_processor", "gpt_oss_tokenizer", TypeError, "vlm_processor/", id="gpt-oss-tokenizer-as-vlm"),
    pytest.param("vlm_processor", "qwen_image_processor", TypeError, "vlm_processor/", id="image-processor-as-vlm"),
    pytest.param("llm_tokenizer", "qwen_tokenizer", ValueError, "llm_tokenizer/", id="qwen-tokenizer-as-llm"),
    pytest.param("llm_tokenizer", "qwen_processor", TypeError, "llm_tokenizer/", id="qwen-processor-as-llm"),
]


@pytest.mark.parametrize(("argument", "wrong", "error", "fix"), PROCESSOR_CASES)
def test_wrong_processor_rejected(
    model, photos, vlm_processor, llm_tokenizer, forward_calls, argument, wrong, error, fix
):
    objects = {
        "gpt_oss_tokenizer": llm_tokenizer,
        "qwen_image_processor": vlm_processor.image_processor,
        "qwen_tokenizer": vlm_processor.tokenizer,
        "qwen_processor": vlm_processor,
    }
    value = objects[wrong]
    with pytest.raises(error) as raised:
        model.generate(images=photos["coffee"], text_prompt=QUESTION, **{argument: value}, **SHORT)
    message = str(raised.value)
    assert argument in message
    assert fix in message
    if error is TypeError:
        assert type(value).__name__ in message
    else:
        assert value.name_or_path in message
        assert "harmony tokens" in message
        assert "<|channel|>" in message
    assert forward_calls == []


# ---------------------------------------------------------------------------------------------
# chat() messages
# ---------------------------------------------------------------------------------------------

ASK = {"role": "user", "content": QUESTION}
REPLY = {"role": "assistant", "content": "A cup."}

CHAT_CASES = [
    pytest.param("What is this?", TypeError, ["messages", "str"], id="string"),
    pytest.param(ASK, TypeError, ["messages", "dict"], id="single-dict"),
    pytest.param([], ValueError, ["messages", "empty"], id="empty-list"),
    pytest.param(["hi"], ValueError, ["messages[0]", "'hi'", "'role'"], id="message-string"),
    pytest.param([{"content": "hi"}], ValueError, ["messages[0]", "'role'"], id="no-role"),
    pytest.param([{"role": "user"}], ValueError, ["messages[0]", "'content'"], id="no-content"),
    pytest.param([{"role": "tool", "content": "42"}, ASK], ValueError, ["messages[0]", "'tool'"], id="role-tool"),
    pytest.param([ASK, REPLY], ValueError, ["last message", "'assistant'"], id="last-assistant"),
    pytest.param([ASK, {"role": "assistant", "content": [{"type": "image", "image": "cup.png"}]}, ASK], ValueError,
                 ["messages[1]['content'][0]", "'assistant'", "user messages"], id="assistant-image"),
    pytest.param([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Hi"}]}],
                 ValueError, ["messages[0]['content'][0]", "'audio'", "'text'"], id="audio-part"),
    pytest.param([{"role": "user", "content": []}, REPLY, ASK], ValueError, ["messages[0]", "no text and no image"],
                 id="user-without-content"),
    pytest.param([{"role": "user", "content": [{"type": "image", "image": "cup.png"}]}], ValueError,
                 ["messages[0]", "no text"], id="last-user-image-only"),
    pytest.param([{"role": "user", "content": None}], TypeError, ["messages[0]['content']", "NoneType"],
                 id="content-none"),
    pytest.param([{"role": "user", "content": [{"type": "text", "text": 5}]}], TypeError,
                 ["messages[0]['content'][0]", "int"], id="text-not-string"),
    pytest.param([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], ValueError,
                 ["messages[0]['content'][0]", "without an image"], id="image-part-empty"),
    pytest.param([{"role": "user", "content": [{"type": "image_url", "image_url": {}}, {"type": "text", "text": "Q"}]}],
                 ValueError, ["messages[0]['content'][0]", "without an image"], id="image-url-without-url"),
]


@pytest.mark.parametrize(("messages", "error", "fragments"), CHAT_CASES)
def test_chat_rejects(model, forward_calls, messages, error, fragments):
    before = copy.deepcopy(messages)
    with pytest.raises(error) as raised:
        model.chat(messages, **SHORT)
    assert_mentions(str(raised.value), fragments)
    assert messages == before
    assert forward_calls == []


def test_chat_bad_image_keeps_messages(model, edge_images, forward_calls):
    path = str(edge_images["not_an_image"])
    messages = [{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": QUESTION}]}]
    before = copy.deepcopy(messages)
    with pytest.raises(ImageLoadError) as raised:
        model.chat(messages, **SHORT)
    assert path in str(raised.value)
    assert messages == before
    assert forward_calls == []


# ---------------------------------------------------------------------------------------------
# Context overflow
# ---------------------------------------------------------------------------------------------


def stage2_prompt_tokens(model, tokenizer, question: str) -> int:
    """Tokens of a text-only stage-2 prompt, rendered with gpt-oss's chat template directly."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False, reasoning_effort=model.config.reasoning_effort)  # fmt: skip
    return len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("entry", ["generate", "chat"])
def test_context_overflow_rejected(model, llm_tokenizer, forward_calls, monkeypatch, entry):
    prompt_tokens = stage2_prompt_tokens(model, llm_tokenizer, QUESTION)
    budget = SHORT["max_new_tokens"]
    limit = prompt_tokens + budget - 1
    monkeypatch.setattr(model.config, "max_context_tokens", limit)
    with pytest.raises(ValueError) as raised:
        if entry == "generate":
            model.generate(text_prompt=QUESTION, **SHORT)
        else:
            model.chat([{"role": "user", "content": QUESTION}], **SHORT)
    message = str(raised.value)
    assert f"{prompt_tokens} tokens" in message
    assert f"max_new_tokens is {budget}" in message
    assert f"context of {limit} tokens" in message
    assert forward_calls == []


def test_context_exact_fit_accepted(model, llm_tokenizer, monkeypatch):
    prompt_tokens = stage2_prompt_tokens(model, llm_tokenizer, QUESTION)
    monkeypatch.setattr(model.config, "max_context_tokens", prompt_tokens + SHORT["max_new_tokens"])
    output = model.generate(text_prompt=QUESTION, return_dict=True, **SHORT)
    assert output.prompt_tokens == prompt_tokens
    assert output.generated_tokens <= SHORT["max_new_tokens"]


# ---------------------------------------------------------------------------------------------
# Images that cannot be used
# ---------------------------------------------------------------------------------------------


def broken_file(name: str, *words: str):
    def build(edge_images, server):
        path = edge_images[name]
        return path, {}, [str(path), *words]

    return build


def zero_side_array(edge_images, server):
    return np.zeros((0, 16, 3), dtype=np.uint8), {}, ["shape=(0, 16, 3)", "zero side"]


def missing_file(edge_images, server):
    path = edge_images["empty"].with_name("absent.png")
    return path, {}, [str(path), "not found"]


def url_not_found(edge_images, server):
    url = f"{server.url}/absent.png"
    return url, {}, [url, "404"]


def url_too_large(edge_images, server):
    url = f"{server.url}/huge"
    return url, {"max_image_bytes": 4096}, [url, "4096", "max_image_bytes"]


def url_ftp(edge_images, server):
    url = "ftp://127.0.0.1/photo.png"
    return url, {}, [url, "'ftp'", "http://"]


IMAGE_CASES = [
    pytest.param(broken_file("empty", "0 bytes"), id="empty-file"),
    pytest.param(broken_file("not_an_image"), id="not-an-image"),
    pytest.param(broken_file("truncated", "truncated"), id="truncated"),
    pytest.param(broken_file("bomb", "decompression bomb", "MAX_IMAGE_PIXELS"), id="bomb"),
    pytest.param(zero_side_array, id="zero-side-array"),
    pytest.param(missing_file, id="missing-file"),
    pytest.param(url_not_found, id="url-404"),
    pytest.param(url_too_large, id="url-too-large"),
    pytest.param(url_ftp, id="url-ftp"),
]


@pytest.mark.parametrize("build", IMAGE_CASES)
def test_generate_rejects_image(model, edge_images, forward_calls, build):
    with ImageServer(edge_images["empty"].parent, huge_bytes=64 * 1024) as server:
        image, kwargs, fragments = build(edge_images, server)
        with pytest.raises(ImageLoadError) as raised:
            model.generate(images=image, text_prompt=QUESTION, **{**SHORT, **kwargs})
    assert_mentions(str(raised.value), fragments)
    assert forward_calls == []


@contextmanager
def vision_pixels(model):
    """Collect the pixel tensors the vision tower receives while the block runs."""
    pixels = []
    handle = model.vlm.model.visual.register_forward_pre_hook(lambda module, args: pixels.append(args[0].clone()))
    try:
        yield pixels
    finally:
        handle.remove()


def test_animated_gif_first_frame(model, edge_images, tmp_path):
    import unified_images

    # A name of its own: the warning is logged once per message, and the message names the file.
    gif = tmp_path / "animated_for_faults.gif"
    shutil.copyfile(edge_images["animated"], gif)
    with Image.open(gif) as animation:
        frame_count = animation.n_frames
        first = animation.convert("RGB")
        animation.seek(1)
        second = animation.convert("RGB")

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    image_logger = logging.getLogger(unified_images.load_image.__module__)
    image_logger.addHandler(handler)
    try:
        with vision_pixels(model) as pixels:
            for image in (gif, gif, first, second):
                model.generate(images=image, text_prompt=QUESTION, use_description_cache=False, **SHORT)
    finally:
        image_logger.removeHandler(handler)

    warnings = [record.getMessage() for record in records if "frames" in record.getMessage()]
    assert len(warnings) == 1
    assert str(gif) in warnings[0]
    assert f"{frame_count} frames" in warnings[0]
    assert torch.equal(pixels[0], pixels[2])
    assert not torch.equal(pixels[0], pixels[3])


# ---------------------------------------------------------------------------------------------
# Model folder faults
# ---------------------------------------------------------------------------------------------


def shard_paths(folder: Path) -> list[Path]:
    index = json.loads((folder / INDEX_NAME).read_text())
    return [folder / name for name in sorted(set(index["weight_map"].values()))]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def double_text_intermediate(config: dict) -> None:
    config["text_config"]["intermediate_size"] *= 2


def remove_vlm_folder(folder: Path):
    shutil.rmtree(folder / "vlm")
    return folder / "vlm", ["build_repo.py"]


def remove_llm_shard(folder: Path):
    shard = shard_paths(folder / "llm")[0]
    shard.unlink()
    return shard, [INDEX_NAME]


def truncate_llm_shard(folder: Path):
    shard = max(shard_paths(folder / "llm"), key=lambda path: path.stat().st_size)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return shard, ["truncated", f"{len(data) // 2} bytes"]


def resize_vlm_configs(folder: Path):
    # Both configs agree with each other, so the mismatch is with the weights.
    edit_json(folder / "config.json", lambda top: double_text_intermediate(top["vlm_config"]))
    edit_json(folder / "vlm" / "config.json", double_text_intermediate)
    return folder / "vlm", ["build_repo.py"]


def resize_top_level_vlm_config(folder: Path):
    edit_json(folder / "config.json", lambda top: double_text_intermediate(top["vlm_config"]))
    return folder / "vlm" / "config.json", ["text_config.intermediate_size", "build_repo.py"]


def remove_quantization_config(folder: Path):
    edit_json(folder / "config.json", lambda top: top["llm_config"].pop("quantization_config"))
    edit_json(folder / "llm" / "config.json", lambda config: config.pop("quantization_config"))
    return folder / "llm" / "config.json", ["MXFP4", "build_repo.py"]


def remove_processor_configs(folder: Path):
    for path in (folder / "vlm_processor").glob("*.json"):
        path.unlink()
    return folder / "vlm_processor" / "preprocessor_config.json", ["build_repo.py"]


def remove_llm_tokenizer_file(folder: Path):
    (folder / "llm_tokenizer" / "tokenizer.json").unlink()
    return folder / "llm_tokenizer" / "tokenizer.json", ["build_repo.py"]


FOLDER_CASES = [
    pytest.param(remove_processor_configs, id="no-processor-configs"),
    pytest.param(remove_llm_tokenizer_file, id="no-llm-tokenizer-json"),
    pytest.param(remove_vlm_folder, id="missing-vlm"),
    pytest.param(remove_llm_shard, id="missing-llm-shard"),
    pytest.param(truncate_llm_shard, id="truncated-llm-shard"),
    pytest.param(resize_vlm_configs, id="vlm-config-vs-weights"),
    pytest.param(resize_top_level_vlm_config, id="top-level-vs-vlm-config"),
    pytest.param(remove_quantization_config, id="no-quantization-config"),
]


@pytest.mark.parametrize("damage", FOLDER_CASES)
def test_folder_fault_rejected(built_folder, tmp_path, damage):
    from modeling_unified import UnifiedMultimodalModel

    folder = tmp_path / "unified"
    shutil.copytree(built_folder, folder)
    path, fragments = damage(folder)
    with pytest.raises(FolderError) as raised:
        UnifiedMultimodalModel.from_pretrained(folder)
    assert_mentions(str(raised.value), [str(path), *fragments])


def test_folder_error_is_value_error():
    assert issubclass(FolderError, ValueError)


def test_verify_catches_flipped_byte(built_folder, tmp_path):
    from modeling_unified import UnifiedMultimodalModel

    folder = tmp_path / "unified"
    shutil.copytree(built_folder, folder)
    shard = shard_paths(folder / "vlm")[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to a tensor, not to the header
    shard.write_bytes(bytes(data))

    with pytest.raises(FolderError) as raised:
        UnifiedMultimodalModel.from_pretrained(folder, verify=True)
    message = str(raised.value)
    assert shard.relative_to(folder).as_posix() in message
    assert "sha256" in message
    # The manifest check is opt-in: the same folder loads without it.
    loaded = UnifiedMultimodalModel.from_pretrained(folder)
    assert loaded.source_folder == folder


def test_damaged_header_named_without_verify(built_folder, tmp_path):
    from modeling_unified import UnifiedMultimodalModel

    folder = tmp_path / "unified"
    shutil.copytree(built_folder, folder)
    shard = shard_paths(folder / "vlm")[-1]
    data = shard.read_bytes()
    # Same length, valid JSON, but a dtype safetensors does not know.
    shard.write_bytes(data.replace(b'"BF16"', b'"XX16"', 1))

    with pytest.raises(FolderError) as raised:
        UnifiedMultimodalModel.from_pretrained(folder)
    message = str(raised.value)
    assert str(folder / "vlm") in message
    assert "--verify" in message


class _CreateFileWhenUnpickled:
    """Unpickling this object opens `path` for writing, so a load of it leaves a file behind."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("keep_safetensors", [False, True], ids=["bin-only", "bin-beside-safetensors"])
def test_pickle_weights_never_loaded(built_folder, tmp_path, keep_safetensors):
    from modeling_unified import UnifiedMultimodalModel

    folder = tmp_path / "unified"
    shutil.copytree(built_folder, folder)
    marker = tmp_path / "unpickled.txt"
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_CreateFileWhenUnpickled(control))).close()
    assert control.exists()
    vlm = folder / "vlm"
    if not keep_safetensors:
        for shard in shard_paths(vlm):
            shard.unlink()
        (vlm / INDEX_NAME).unlink()
    (vlm / "pytorch_model.bin").write_bytes(pickle.dumps(_CreateFileWhenUnpickled(marker)))

    if keep_safetensors:
        loaded = UnifiedMultimodalModel.from_pretrained(folder)
        assert loaded.source_folder == folder
    else:
        with pytest.raises(FolderError) as raised:
            UnifiedMultimodalModel.from_pretrained(folder)
        assert str(vlm) in str(raised.value)
        assert "safetensors" in str(raised.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


def test_threads_match_single_calls(model, photos, fresh_cache):
    requests = [(photos["astronaut"], "Who is this?"), (photos["coffee"], "What is on the table?"),
                (photos["astronaut"], "Who is this?")]  # fmt: skip
    singles = [
        model.generate(images=image, text_prompt=question, return_dict=True, use_description_cache=False, **SHORT)
        for image, question in requests
    ]
    assert len(fresh_cache) == 0

    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        image, question = requests[index]
        try:
            results[index] = model.generate(images=image, text_prompt=question, return_dict=True, **SHORT)
        except BaseException as error:  # reported by the `errors == []` assert in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert sorted(results) == list(range(len(requests)))
    for index, single in enumerate(singles):
        assert [d.text for d in results[index].descriptions] == [d.text for d in single.descriptions]
        assert results[index].llm_output_ids == single.llm_output_ids
        assert results[index].answer == single.answer
    distinct = len(set(requests))
    assert len(fresh_cache) == distinct
    assert sum(result.cached_descriptions for result in results.values()) == len(requests) - distinct

    # Each cached entry serves the description a single-threaded call wrote for that image and question.
    for (image, question), single in dict(zip(requests, singles)).items():
        again = model.generate(images=image, text_prompt=question, return_dict=True, **SHORT)
        assert again.cached_descriptions == 1
        assert [d.text for d in again.descriptions] == [d.text for d in single.descriptions]


# ---------------------------------------------------------------------------------------------
# Import safety
# ---------------------------------------------------------------------------------------------

IMPORT_PROBE = """
    import importlib, json, socket, sys

    attempts = []

    def reject(name):
        def rejected(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"network access during import: {name}")
        return rejected

    socket.socket.connect = reject("socket.connect")
    socket.socket.connect_ex = reject("socket.connect_ex")
    socket.create_connection = reject("create_connection")
    socket.getaddrinfo = reject("getaddrinfo")
    sys.path.insert(0, sys.argv[1])
    for name in sys.argv[2:]:
        importlib.import_module(name)
    print(json.dumps(attempts))
"""


def listing(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def import_in_subprocess(tmp_path: Path, source_dir: Path, modules: list[str]) -> tuple[list[str], dict, dict]:
    """Import `modules` from `source_dir` in a fresh interpreter that rejects network calls.

    Returns the rejected network calls, and listings of a fresh HF_HOME, XDG_CACHE_HOME and working
    directory before and after the imports.
    """
    folders = {name: tmp_path / name for name in ("hf_home", "cache", "work")}
    for folder in folders.values():
        folder.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(folders["hf_home"]), XDG_CACHE_HOME=str(folders["cache"]), PYTHONDONTWRITEBYTECODE="1")
    before = {name: listing(folder) for name, folder in folders.items()}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(IMPORT_PROBE), str(source_dir), *modules],
        capture_output=True, text=True, env=env, cwd=folders["work"], timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = {name: listing(folder) for name, folder in folders.items()}
    return json.loads(result.stdout.strip().splitlines()[-1]), before, after


def test_import_probe_detects_faults(tmp_path):
    # A module that dials out and writes a file on import must be caught by the same probe.
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (source_dir / "noisy_module.py").write_text(textwrap.dedent("""
        import os, socket
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        except OSError:
            pass
        open(os.path.join(os.environ["HF_HOME"], "written.txt"), "w").close()
    """))
    attempts, before, after = import_in_subprocess(tmp_path, source_dir, ["noisy_module"])
    assert attempts == ["create_connection"]
    assert after["hf_home"] == [*before["hf_home"], "written.txt"]


def test_import_has_no_side_effects(tmp_path):
    modules = sorted(path.stem for path in REPO_ROOT.glob("unified_*.py"))
    modules += ["configuration_unified", "modeling_unified"]
    assert {Path(name).stem for name in CODE_FILES} <= set(modules)

    attempts, before, after = import_in_subprocess(tmp_path, REPO_ROOT, modules)
    assert attempts == []
    for name, files in before.items():
        assert after[name] == files, name


def test_sources_never_unpickle_or_eval():
    # Method calls such as `model.eval()` are allowed; the built-in eval() is not.
    patterns = {"pickle": re.compile(r"pickle"), "torch.load": re.compile(r"torch\.load"),
                "eval(": re.compile(r"(?<![\w.])eval\(")}  # fmt: skip
    sources = sorted(path for path in REPO_ROOT.rglob("*.py")
                     if "tests" not in path.relative_to(REPO_ROOT).parts
                     and not any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts))  # fmt: skip
    found = [f"{path.name}: {name}" for path in sources for name, pattern in patterns.items()
             if pattern.search(path.read_text())]  # fmt: skip
    assert "modeling_unified.py" in {path.name for path in sources}
    assert found == []
