"""UnifiedMultimodalModel: loading, the two stages, harmony output, saving."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import GenerationConfig, LogitsProcessorList

from helpers import ScriptedLogits, harmony_ids

QUESTIONS = {
    "astronaut": "What is the main subject of this image?",
    "coffee": "How many cups are on the table?",
    "page": "What does the printed text say?",
}
SPECIAL_MARKERS = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|return|>", "<|call|>", "analysis")


def run_python(code: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=merged, cwd=cwd, timeout=600
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_answer(model, processor, tokenizer, image: Image.Image, question: str, budget: int, description_budget: int):
    """Both stages run by hand with transformers, following the documented prompts and budget rule."""
    config = model.config
    vision_text = config.vision_prompt.replace("{visual}", "image").replace("{question}", question)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vision_text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    output = model.vlm.generate(**inputs, max_new_tokens=description_budget, do_sample=False)
    description = processor.tokenizer.decode(
        [t for t in output[0, inputs["input_ids"].shape[1] :].tolist() if t not in (151645, 151643)],
        skip_special_tokens=True,
    ).strip()

    conversation = [
        {"role": "developer", "content": config.developer_prompt},
        {"role": "user", "content": f"Image description:\n{description}\n\nQuestion: {question}"},
    ]
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False, reasoning_effort="medium")
    ids = tokenizer.encode(text, add_special_tokens=False)
    reserve = min(config.answer_reserve_tokens, budget // 2)
    stops = {200002, 199999, 200012}
    first = model.llm.generate(torch.tensor([ids]), max_new_tokens=budget - reserve, do_sample=False)[0, len(ids) :].tolist()
    if stops & set(first):
        return description, first
    # No stop token: the documented rescue opens the final channel and continues within the reserve.
    first += harmony_ids(tokenizer, "<|end|><|start|>assistant<|channel|>final<|message|>")
    continued = model.llm.generate(torch.tensor([ids + first]), max_new_tokens=reserve, do_sample=False)
    return description, first + continued[0, len(ids) + len(first) :].tolist()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_load_auto_model_resolves_remote_class(built_folder):
    result = run_python(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel
        config = AutoConfig.from_pretrained({str(built_folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(built_folder)!r}, trust_remote_code=True)
        print(type(config).__name__, type(model).__name__, type(model).__module__.split('.')[0], model.mxfp4_path)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["UnifiedConfig", "UnifiedMultimodalModel", "transformers_modules", "dequantized"]


def test_load_from_folder_on_sys_path(built_folder, tmp_path):
    result = run_python(
        """
        import modeling_unified
        from modeling_unified import UnifiedMultimodalModel
        model = UnifiedMultimodalModel.from_pretrained(".")
        print(modeling_unified.__file__, type(model.vlm).__name__, type(model.llm).__name__)
        """,
        env={"PYTHONPATH": str(built_folder)},
        cwd=built_folder,
    )
    assert result.returncode == 0, result.stderr
    module_file, vlm_class, llm_class = result.stdout.split()
    assert Path(module_file).parent == built_folder
    assert (vlm_class, llm_class) == ("Qwen3VLForConditionalGeneration", "GptOssForCausalLM")


def test_load_hub_id_from_offline_cache(built_folder, tmp_path):
    # A Hugging Face cache laid out by hand: blobs named by hash, snapshot entries linking to them.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tester--unified"
    snapshot = repo / "snapshots" / commit
    for path in sorted(built_folder.rglob("*")):
        if path.is_file():
            blob = repo / "blobs" / sha256(path)
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
            entry = snapshot / path.relative_to(built_folder)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.symlink_to(os.path.relpath(blob, entry.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    result = run_python(
        f"""
        from transformers import AutoModel
        model = AutoModel.from_pretrained("tester/unified", trust_remote_code=True)
        print(type(model).__name__, model.source_folder.name, type(model.get_llm_tokenizer()).__name__)
        pinned = AutoModel.from_pretrained("tester/unified", revision={commit!r}, trust_remote_code=True)
        print(pinned.source_folder.name)
        """,
        env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    kind, folder, _, pinned_folder = result.stdout.split()
    assert (kind, folder, pinned_folder) == ("UnifiedMultimodalModel", commit, commit)


def test_dequantize_warning_once_on_cpu(built_folder):
    result = run_python(
        f"""
        from modeling_unified import UnifiedMultimodalModel
        model = UnifiedMultimodalModel.from_pretrained({str(built_folder)!r})
        model = UnifiedMultimodalModel.from_pretrained({str(built_folder)!r})
        print("PATH", model.mxfp4_path)
        print("REASON", model.mxfp4_reason)
        """,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("MXFP4 experts are dequantized") == 1
    assert "MXFP4 quantization is only supported" not in result.stderr
    assert "PATH dequantized" in result.stdout
    assert "REASON no CUDA GPU is available" in result.stdout


def test_load_dtype_float32(built_folder):
    from modeling_unified import UnifiedMultimodalModel

    model = UnifiedMultimodalModel.from_pretrained(built_folder, dtype=torch.float32, attn_implementation="eager")
    assert model.vlm.model.visual.patch_embed.proj.weight.dtype == torch.float32
    assert model.llm.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.float32
    assert model.vlm.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "device_map",
    ["cpu", "auto", {"vlm": "cpu", "llm": "cpu"}, {"": "cpu"}, {"vlm.model": "cpu", "vlm.lm_head": "cpu", "llm": "cpu"}],
)
def test_load_device_maps(built_folder, device_map):
    from modeling_unified import UnifiedMultimodalModel

    model = UnifiedMultimodalModel.from_pretrained(built_folder, device_map=device_map)
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"cpu"}


def test_device_map_bad_key(built_folder):
    from modeling_unified import UnifiedMultimodalModel

    with pytest.raises(ValueError, match="'vision'"):
        UnifiedMultimodalModel.from_pretrained(built_folder, device_map={"vision": "cpu", "llm": "cpu"})


def test_plan_placement_shares_gpus():
    from unified_loading import plan_placement

    plan = plan_placement({"vlm": 9, "llm": 14}, [(0, 16), (1, 16)])
    assert plan == {"vlm": {0: 9}, "llm": {0: 7, 1: 7}}


def test_plan_placement_single_gpu_holds_both():
    from unified_loading import plan_placement

    plan = plan_placement({"vlm": 9, "llm": 13}, [(0, 70), (1, 70)])
    assert plan == {"vlm": {0: 9}, "llm": {0: 13}}


def test_plan_placement_too_small():
    from unified_loading import plan_placement

    with pytest.raises(ValueError, match="max_memory"):
        plan_placement({"vlm": 9e9, "llm": 14e9}, [(0, 10e9)])


def test_transformers_version_check():
    from modeling_unified import check_transformers_version

    check_transformers_version("5.23.0")
    with pytest.raises(ImportError, match="4.57.0"):
        check_transformers_version("4.57.0")
    with pytest.raises(ImportError, match="6.1.0"):
        check_transformers_version("6.1.0")


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("photo", sorted(QUESTIONS))
def test_generate_matches_manual_stages(model, photos, vlm_processor, llm_tokenizer, photo):
    image = Image.open(photos[photo]).convert("RGB")
    question = QUESTIONS[photo]
    output = model.generate(
        images=image, text_prompt=question, max_new_tokens=16, description_max_new_tokens=12,
        do_sample=False, return_dict=True, use_description_cache=False,
    )  # fmt: skip
    description, reply_ids = reference_answer(model, vlm_processor, llm_tokenizer, image, question, 16, 12)
    assert output.descriptions[0].text == description
    assert output.llm_output_ids == reply_ids


def test_generate_answer_has_no_markers(model, photos):
    answer = model.generate(images=str(photos["chelsea"]), text_prompt="What animal is this?", max_new_tokens=24,
                            description_max_new_tokens=8, do_sample=False)  # fmt: skip
    assert isinstance(answer, str)
    for marker in SPECIAL_MARKERS[:-1]:
        assert marker not in answer


def test_generate_scripted_harmony(model, photos, llm_tokenizer):
    script = harmony_ids(
        llm_tokenizer,
        "<|channel|>analysis<|message|>The description mentions a person in a suit.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>An astronaut.<|return|>",
    )
    output = model.generate(
        images=Image.open(photos["astronaut"]), text_prompt=QUESTIONS["astronaut"], max_new_tokens=200,
        description_max_new_tokens=8, logits_processor=LogitsProcessorList([ScriptedLogits(script)]),
        return_dict=True,
    )  # fmt: skip
    assert output.answer == "An astronaut."
    assert output.reasoning == "The description mentions a person in a suit."
    assert output.stop_reason == "return"
    assert not output.forced_final
    assert output.llm_output_ids == script
    for marker in SPECIAL_MARKERS:
        assert marker not in output.answer


def test_generate_stops_at_return_not_end(model, llm_tokenizer):
    reply = harmony_ids(
        llm_tokenizer, "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|return|>"
    )
    script = reply + harmony_ids(llm_tokenizer, "more")
    output = model.generate(text_prompt="Say b.", max_new_tokens=100,
                            logits_processor=LogitsProcessorList([ScriptedLogits(script)]), return_dict=True)  # fmt: skip
    assert output.llm_output_ids == reply
    assert 200007 not in model.llm.generation_config.eos_token_id
    assert {200002, 200012} <= set(model.llm.generation_config.eos_token_id)


def test_generate_budget_rescue(model, llm_tokenizer):
    budget = 24
    reserve = min(model.config.answer_reserve_tokens, budget // 2)
    analysis = harmony_ids(llm_tokenizer, "<|channel|>analysis<|message|>" + "thinking " * 20)[: budget - reserve]
    answer = harmony_ids(llm_tokenizer, "Blue.<|return|>")
    script = analysis + answer
    output = model.generate(text_prompt="What colour is the sky?", max_new_tokens=budget,
                            logits_processor=LogitsProcessorList([ScriptedLogits(script)]), return_dict=True)  # fmt: skip
    assert output.forced_final
    assert output.answer == "Blue."
    assert output.stop_reason == "return"
    assert output.generated_tokens == len(script)


@pytest.mark.parametrize("reserve", [0, 6])
def test_generate_reserve_per_call(model, llm_tokenizer, reserve):
    budget = 24
    configured = model.config.answer_reserve_tokens
    assert configured not in (0, reserve)
    analysis = harmony_ids(llm_tokenizer, "<|channel|>analysis<|message|>" + "thinking " * 40)
    script = analysis[: budget - reserve] + harmony_ids(llm_tokenizer, "Blue.<|return|>")
    output = model.chat([{"role": "user", "content": "What colour is the sky?"}], max_new_tokens=budget,
                        answer_reserve_tokens=reserve, logits_processor=LogitsProcessorList([ScriptedLogits(script)]),
                        return_dict=True)  # fmt: skip
    assert output.forced_final == (reserve > 0)
    assert output.answer == ("Blue." if reserve else "")
    assert output.generated_tokens == (len(script) if reserve else budget)
    assert model.config.answer_reserve_tokens == configured


def test_generate_rescue_without_stop(model):
    output = model.generate(text_prompt="Hello?", max_new_tokens=10, do_sample=False, return_dict=True)
    assert output.forced_final
    assert output.answer != ""
    assert output.generated_tokens <= 10


def test_generate_does_not_mutate_inputs(model, photos, vlm_processor, llm_tokenizer):
    images = [Image.open(photos["coffee"]), str(photos["rocket"])]
    images_before = [images[0].copy(), images[1]]
    generation_config = GenerationConfig(do_sample=False, max_new_tokens=3)
    config_before = generation_config.to_dict()
    llm_defaults = model.llm.generation_config.to_dict()
    vlm_defaults = model.vlm.generation_config.to_dict()
    padding_sides = (vlm_processor.tokenizer.padding_side, llm_tokenizer.padding_side)

    model.generate(images=images, text_prompt="Compare.", vlm_processor=vlm_processor, llm_tokenizer=llm_tokenizer,
                   max_new_tokens=8, description_max_new_tokens=4, generation_config=generation_config)  # fmt: skip

    assert generation_config.to_dict() == config_before
    assert model.llm.generation_config.to_dict() == llm_defaults
    assert model.vlm.generation_config.to_dict() == vlm_defaults
    assert (vlm_processor.tokenizer.padding_side, llm_tokenizer.padding_side) == padding_sides
    assert len(images) == 2
    assert images[1] == images_before[1]
    assert images[0].tobytes() == images_before[0].tobytes()


def test_generate_loads_processors_from_folder(model):
    answer = model.generate(text_prompt="Hi", max_new_tokens=6, do_sample=False)
    assert isinstance(answer, str)
    assert model.get_llm_tokenizer().name_or_path.endswith("llm_tokenizer")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip(model, built_folder, tmp_path):
    from modeling_unified import UnifiedMultimodalModel

    target = tmp_path / "saved"
    model.save_pretrained(target)
    for shard in sorted((built_folder / "llm").glob("*.safetensors")):
        assert sha256(target / "llm" / shard.name) == sha256(shard)
    llm_config = json.loads((target / "llm" / "config.json").read_text())
    assert llm_config["quantization_config"]["quant_method"] == "mxfp4"

    reloaded = UnifiedMultimodalModel.from_pretrained(target, verify=True)
    original = dict(model.vlm.named_parameters())
    for name, parameter in reloaded.vlm.named_parameters():
        assert torch.equal(parameter, original[name]), name


def test_push_to_hub_uploads_folder(model, monkeypatch):
    import huggingface_hub

    calls = {}

    class RepoUrl:
        repo_id = "tester/unified"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return RepoUrl()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        calls["readme"] = (folder / "README.md").read_text()
        calls["repo_id"] = repo_id
        return "https://huggingface.co/tester/unified/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = model.push_to_hub("tester/unified", private=True)

    assert url.endswith("/commit/abc")
    assert calls["create_repo"][0] == "tester/unified"
    assert calls["create_repo"][1]["private"] is True
    for expected in ("config.json", "modeling_unified.py", "manifest.json", "llm/model-00000-of-00002.safetensors",
                     "llm_tokenizer/tokenizer.json", "vlm_processor/preprocessor_config.json", "build_repo.py"):  # fmt: skip
        assert expected in calls["files"]
    assert "base_model:" in calls["readme"]


def test_unchanged_config_is_copied_not_mutated(model):
    before = copy.deepcopy(model.config.to_dict())
    model.generate(text_prompt="Hi", max_new_tokens=4, reasoning_effort="low", do_sample=False)
    assert model.config.to_dict() == before
