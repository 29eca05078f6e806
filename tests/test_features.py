"""Generation features: input kinds, several images, batches, streaming, controls, chat, cache, video."""

from __future__ import annotations

import base64
import copy
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import LogitsProcessorList, TextIteratorStreamer, TextStreamer

from helpers import ImageServer, ScriptedLogits, harmony_ids

SHORT = {"max_new_tokens": 8, "description_max_new_tokens": 6, "do_sample": False}


@contextmanager
def vision_calls(model):
    """Record the pixel tensors and grids the vision tower receives while the block runs."""
    calls = []

    def record(module, args, kwargs):
        calls.append({"pixels": args[0].detach().clone(), "grid": kwargs.get("grid_thw", args[1] if len(args) > 1 else None)})

    handle = model.vlm.model.visual.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def llm_prompts(model, tokenizer):
    """Record the decoded text of every stage-2 prefill."""
    texts = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            texts.extend(tokenizer.decode(row, skip_special_tokens=False) for row in ids.tolist())

    handle = model.llm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield texts
    finally:
        handle.remove()


def describe(model, image, question="What is shown?", **kwargs):
    output = model.generate(images=image, text_prompt=question, return_dict=True, use_description_cache=False,
                            **{**SHORT, **kwargs})  # fmt: skip
    return output


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def test_input_kinds_give_same_description(model, photos, tmp_path):
    # A small crop keeps nine runs of the vision model quick.
    path = tmp_path / "astronaut_crop.png"
    Image.open(photos["astronaut"]).convert("RGB").crop((128, 0, 352, 224)).save(path)
    rgb = Image.open(path).convert("RGB")
    array = np.asarray(rgb)
    data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    with ImageServer(path.parent) as server:
        inputs = {
            "pil": rgb,
            "str path": str(path),
            "Path": path,
            "bytes": path.read_bytes(),
            "data url": data_url,
            "http url": f"{server.url}/{path.name}",
            "numpy": array,
            "numpy float": array.astype(np.float32) / 255.0,
            "tensor": torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(),
        }
        descriptions = {name: describe(model, value).descriptions[0].text for name, value in inputs.items()}
    assert server.requests == [f"/{path.name}"]
    expected = descriptions["pil"]
    for name, text in descriptions.items():
        assert text == expected, name


def test_exif_rotation_reaches_vlm_upright(model, edge_images):
    stored = Image.open(edge_images["exif_rotated"])
    # Rebuilt from the pixels alone: Pillow's transpose keeps the EXIF block, which would rotate it again.
    manual = Image.fromarray(np.asarray(stored.transpose(Image.Transpose.ROTATE_270).convert("RGB")))
    assert manual.size == ImageOps.exif_transpose(stored).size
    with vision_calls(model) as rotated_calls:
        describe(model, edge_images["exif_rotated"])
    with vision_calls(model) as manual_calls:
        describe(model, manual)
    assert torch.equal(rotated_calls[0]["pixels"], manual_calls[0]["pixels"])
    assert torch.equal(rotated_calls[0]["grid"], manual_calls[0]["grid"])


@pytest.mark.parametrize("name", ["gray", "gray_alpha", "palette", "rgba", "cmyk", "gray16", "one_pixel", "tall_strip"])
def test_image_modes_reach_vlm(model, edge_images, name):
    with vision_calls(model) as calls:
        output = describe(model, edge_images[name])
    assert len(calls) == 1
    assert calls[0]["pixels"].shape[0] == int(calls[0]["grid"].prod())
    assert output.descriptions[0].label == "Image"


def test_pixel_budget_per_call(model, photos):
    budget = 128 * 128
    with vision_calls(model) as calls:
        describe(model, photos["rocket"], max_image_pixels=budget)
    patches = int(calls[0]["grid"].prod())
    assert patches * 16 * 16 <= budget
    with vision_calls(model) as default_calls:
        describe(model, photos["rocket"])
    assert int(default_calls[0]["grid"].prod()) > patches


def test_default_pixel_budget_from_processor(model, vlm_processor):
    from modeling_unified import _processor_max_pixels

    assert _processor_max_pixels(vlm_processor) == vlm_processor.image_processor.size["longest_edge"]


def test_text_only_skips_vision(model):
    with vision_calls(model) as calls:
        output = model.generate(text_prompt="What is two plus two?", return_dict=True, **SHORT)
    assert calls == []
    assert output.descriptions == []
    assert output.description_tokens == 0


def test_text_only_prompt_has_no_developer_turn(model, llm_tokenizer):
    with llm_prompts(model, llm_tokenizer) as texts:
        model.generate(text_prompt="What is two plus two?", **SHORT)
    assert "<|start|>developer" not in texts[0]
    assert "What is two plus two?" in texts[0]


# ---------------------------------------------------------------------------------------------
# Several images and batches
# ---------------------------------------------------------------------------------------------


def test_several_images_labelled_in_order(model, photos, llm_tokenizer):
    first = describe(model, photos["coffee"], "Compare them.").descriptions[0].text
    second = describe(model, photos["chelsea"], "Compare them.").descriptions[0].text
    with llm_prompts(model, llm_tokenizer) as texts:
        output = describe(model, [photos["coffee"], photos["chelsea"]], "Compare them.")
    assert [d.label for d in output.descriptions] == ["Image 1", "Image 2"]
    assert [d.text for d in output.descriptions] == [first, second]
    prompt = texts[0]
    assert prompt.index("Image 1 description:") < prompt.index("Image 2 description:") < prompt.index("Question:")


def test_several_images_together(model, photos):
    with vision_calls(model) as calls:
        output = describe(model, [photos["coffee"], photos["chelsea"]], "Compare them.", multi_image_mode="together")
    assert [d.label for d in output.descriptions] == ["Images 1-2"]
    assert len(calls) == 1
    assert calls[0]["grid"].shape[0] == 2


def test_batch_equals_single_calls(model, photos):
    prompts = ["What is the main subject?", "What is two plus two?", "Which animal is this?", "Compare the photos."]
    images = [photos["astronaut"], None, photos["chelsea"], [photos["coffee"], photos["rocket"]]]
    batch = model.generate(images=images, text_prompt=prompts, return_dict=True, use_description_cache=False, **SHORT)
    singles = [model.generate(images=i, text_prompt=p, return_dict=True, use_description_cache=False, **SHORT)
               for i, p in zip(images, prompts)]  # fmt: skip
    assert len(batch) == 4
    for batched, single in zip(batch, singles):
        assert [d.text for d in batched.descriptions] == [d.text for d in single.descriptions]
        assert batched.llm_output_ids == single.llm_output_ids
        assert batched.answer == single.answer


def test_batch_returns_strings(model):
    answers = model.generate(text_prompt=["Hi", "Hello"], **SHORT)
    assert isinstance(answers, list)
    assert all(isinstance(answer, str) for answer in answers)


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------

SCRIPT = ("<|channel|>analysis<|message|>Private reasoning about the image.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>A cup of coffee on a saucer.<|return|>")  # fmt: skip


class CollectingStreamer(TextStreamer):
    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.chunks = []
        self.ended = 0

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.chunks.append(text)
        self.ended += int(stream_end)


@pytest.mark.parametrize("skip_prompt", [True, False])
def test_streamer_receives_only_final_text(model, photos, llm_tokenizer, skip_prompt):
    streamer = CollectingStreamer(llm_tokenizer, skip_prompt=skip_prompt, skip_special_tokens=True)
    script = harmony_ids(llm_tokenizer, SCRIPT)
    output = model.generate(images=photos["coffee"], text_prompt="What is this?", max_new_tokens=200,
                            description_max_new_tokens=6, streamer=streamer, return_dict=True,
                            logits_processor=LogitsProcessorList([ScriptedLogits(script)]))  # fmt: skip
    streamed = "".join(streamer.chunks)
    assert output.answer == "A cup of coffee on a saucer."
    assert streamed.strip() == output.answer
    assert "Private reasoning" not in streamed
    assert streamer.ended == 1


def test_iterator_streamer_in_thread(model, llm_tokenizer):
    streamer = TextIteratorStreamer(llm_tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    script = harmony_ids(llm_tokenizer, SCRIPT)
    result = {}

    def run():
        result["answer"] = model.generate(text_prompt="What is this?", max_new_tokens=200, streamer=streamer,
                                          logits_processor=LogitsProcessorList([ScriptedLogits(script)]))  # fmt: skip

    thread = threading.Thread(target=run)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed.strip() == result["answer"] == "A cup of coffee on a saucer."


def test_streamer_gets_forced_answer(model, llm_tokenizer):
    budget = 24
    reserve = min(model.config.answer_reserve_tokens, budget // 2)
    analysis = harmony_ids(llm_tokenizer, "<|channel|>analysis<|message|>" + "hmm " * 30)[: budget - reserve]
    script = analysis + harmony_ids(llm_tokenizer, "Red.<|return|>")
    streamer = CollectingStreamer(llm_tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(text_prompt="Colour?", max_new_tokens=budget, streamer=streamer, return_dict=True,
                            logits_processor=LogitsProcessorList([ScriptedLogits(script)]))  # fmt: skip
    assert output.forced_final
    assert "".join(streamer.chunks).strip() == output.answer == "Red."


def test_streamer_rejects_batch(model, llm_tokenizer):
    with pytest.raises(ValueError, match="batch of 2"):
        model.generate(text_prompt=["a", "b"], streamer=TextStreamer(llm_tokenizer), **SHORT)


# ---------------------------------------------------------------------------------------------
# Controls and intermediate results
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort_in_prompt(model, llm_tokenizer, effort):
    with llm_prompts(model, llm_tokenizer) as texts:
        model.generate(text_prompt="Hi", reasoning_effort=effort, **SHORT)
    assert f"Reasoning: {effort}" in texts[0]


def test_seed_makes_sampling_repeatable(model):
    rng_before = torch.get_rng_state()
    first = model.generate(text_prompt="Tell me something.", max_new_tokens=12, do_sample=True, seed=7, return_dict=True)
    second = model.generate(text_prompt="Tell me something.", max_new_tokens=12, do_sample=True, seed=7, return_dict=True)
    other = model.generate(text_prompt="Tell me something.", max_new_tokens=12, do_sample=True, seed=8, return_dict=True)
    assert first.llm_output_ids == second.llm_output_ids
    assert first.llm_output_ids != other.llm_output_ids
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_stage_settings_kept_apart(model, photos):
    greedy = describe(model, photos["chelsea"], do_sample=True, temperature=1.5, seed=1)
    again = describe(model, photos["chelsea"], do_sample=True, temperature=1.5, seed=2)
    assert greedy.descriptions[0].text == again.descriptions[0].text
    sampled = describe(model, photos["chelsea"], vision_generation_kwargs={"do_sample": True, "temperature": 2.0},
                       seed=3, description_max_new_tokens=12)  # fmt: skip
    assert sampled.descriptions[0].text != describe(model, photos["chelsea"], description_max_new_tokens=12).descriptions[0].text


def test_return_dict_fields(model, photos):
    output = model.generate(images=photos["page"], text_prompt="What does it say?", max_new_tokens=10,
                            description_max_new_tokens=5, do_sample=False, return_dict=True,
                            use_description_cache=False)  # fmt: skip
    assert output.description_tokens == 5
    assert output.prompt_tokens > 0
    assert 0 < output.generated_tokens <= 10
    assert output.stage1_seconds > 0
    assert output.stage2_seconds > 0
    assert output.stop_reason in ("return", "call", "end_of_text", "max_new_tokens")
    assert output.answer_tokens + output.reasoning_tokens <= output.generated_tokens


def test_default_returns_string(model):
    assert isinstance(model.generate(text_prompt="Hi", **SHORT), str)


# ---------------------------------------------------------------------------------------------
# Chat and the description cache
# ---------------------------------------------------------------------------------------------


def test_chat_second_turn_uses_cache(model, photos, fresh_cache):
    image = Image.open(photos["coffee"]).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]}]
    with vision_calls(model) as calls:
        first = model.chat(messages, **SHORT)
        assert len(calls) == 1
        follow_up = messages + [first, {"role": "user", "content": "What colour is the cup?"}]
        second = model.chat(follow_up, return_dict=True, **SHORT)
        assert len(calls) == 1
    assert second.cached_descriptions == 1
    assert first["role"] == "assistant"

    changed = image.copy()
    changed.putpixel((0, 0), tuple(255 - v for v in changed.getpixel((0, 0))))
    changed_messages = [{"role": "user", "content": [{"type": "image", "image": changed},
                                                     {"type": "text", "text": "What is this?"}]}]  # fmt: skip
    with vision_calls(model) as calls:
        model.chat(changed_messages, **SHORT)
    assert len(calls) == 1


def test_chat_does_not_mutate_messages(model, photos):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(photos["chelsea"])}},
                                     {"type": "text", "text": "Which animal?"}]},  # fmt: skip
    ]
    before = copy.deepcopy(messages)
    reply = model.chat(messages, **SHORT)
    assert messages == before
    assert set(reply) == {"role", "content"}


def test_chat_history_reaches_template(model, llm_tokenizer):
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    with llm_prompts(model, llm_tokenizer) as texts:
        model.chat(messages, **SHORT)
    prompt = texts[0]
    assert prompt.index("My name is Ada.") < prompt.index("Hello Ada.") < prompt.index("What is my name?")
    assert "<|channel|>final<|message|>Hello Ada." in prompt


def test_chat_image_from_url(model, photos, fresh_cache):
    with ImageServer(photos["rocket"].parent) as server:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{server.url}/rocket.jpg"}},
                                                 {"type": "text", "text": "What is this?"}]}]  # fmt: skip
        output = model.chat(messages, return_dict=True, **SHORT)
    assert server.requests == ["/rocket.jpg"]
    assert len(output.descriptions) == 1


def test_cache_is_bounded_lru():
    from unified_cache import DescriptionCache

    cache = DescriptionCache(max_entries=2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")
    assert "b" not in cache
    assert cache.get("a") == "A"
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_cache_disabled_per_call(model, photos, fresh_cache):
    with vision_calls(model) as calls:
        model.generate(images=photos["page"], text_prompt="Read it.", use_description_cache=False, **SHORT)
        model.generate(images=photos["page"], text_prompt="Read it.", use_description_cache=False, **SHORT)
    assert len(calls) == 2
    assert len(fresh_cache) == 0


def test_cache_generic_mode_serves_new_question(model, photos, fresh_cache):
    with vision_calls(model) as calls:
        model.generate(images=photos["page"], text_prompt="Read it.", description_mode="generic", **SHORT)
        model.generate(images=photos["page"], text_prompt="How many columns?", description_mode="generic", **SHORT)
        model.generate(images=photos["page"], text_prompt="How many columns?", **SHORT)
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------


def write_video(path, photo, frames: int = 12, fps: int = 6):
    import av

    base = Image.open(photo).convert("RGB").resize((128, 96))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_image(base.rotate(index * 10))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_frames(model, photos):
    frames = [Image.open(photos["astronaut"]).resize((64, 64)).rotate(angle) for angle in (0, 30, 60, 90)]
    output = model.generate(videos=frames, text_prompt="What happens?", return_dict=True, **SHORT)
    assert [d.label for d in output.descriptions] == ["Video"]
    assert output.description_tokens > 0 or output.cached_descriptions == 1


def test_video_file(model, photos, tmp_path):
    video = write_video(tmp_path / "clip.mp4", photos["rocket"])
    with vision_calls(model) as calls:
        output = model.generate(videos=str(video), text_prompt="What happens?", return_dict=True,
                                use_description_cache=False, **SHORT)  # fmt: skip
    assert [d.label for d in output.descriptions] == ["Video"]
    assert len(calls) == 1
    # 12 frames at 6 fps sampled at 2 fps give 4 frames, merged in pairs along time.
    assert int(calls[0]["grid"][0, 0]) == 2


def test_video_single_frame(model, photos):
    output = model.generate(videos=[Image.open(photos["chelsea"])], text_prompt="What happens?", return_dict=True,
                            use_description_cache=False, **SHORT)  # fmt: skip
    assert [d.label for d in output.descriptions] == ["Video"]
    assert output.description_tokens > 0
