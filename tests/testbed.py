"""Offline test bed: tiny Qwen3-VL and gpt-oss sources laid out like local snapshots of the Hub repos.

The sources differ from Qwen/Qwen3-VL-4B-Instruct and openai/gpt-oss-20b only in width, depth and
weight values. Configs are the real ones with sizes shrunk, and tokenizers and chat templates are
the real files. gpt-oss experts are stored in native MXFP4 under the real tensor and shard names.
When the real data folder is missing, a small BPE tokenizer and chat templates of our own stand in.

Command line:

    python tests/testbed.py OUTPUT_DIR [--size tiny|medium] [--seed 0] [--no-fixtures]

writes OUTPUT_DIR/qwen3-vl, OUTPUT_DIR/gpt-oss and OUTPUT_DIR/photos.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_ENV = "UNIFIED_FIXTURES_DIR"
QWEN_FIXTURE = "qwen3-vl-4b-instruct"
GPT_OSS_FIXTURE = "gpt-oss-20b"

# Shrunk sizes. Every token id, vocab size, rope setting and dtype stays as in the real configs,
# so Qwen3-VL keeps head_dim 128 because its mrope_section [24, 20, 20] covers head_dim / 2.
SIZES = {
    "tiny": {
        "qwen_text": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1
        ),
        "qwen_vision": dict(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=64,
            num_position_embeddings=256,
            deepstack_visual_indexes=[1, 2, 3],
        ),
        "gpt_oss": dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_local_experts=8,
        ),
    },
    # Wide enough that matrix products, not Python overhead, dominate a forward pass on a CPU.
    "medium": {
        "qwen_text": dict(
            hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
        ),
        "qwen_vision": dict(
            depth=4,
            hidden_size=256,
            intermediate_size=1024,
            num_heads=4,
            out_hidden_size=512,
            num_position_embeddings=1024,
            deepstack_visual_indexes=[1, 2, 3],
        ),
        "gpt_oss": dict(
            hidden_size=512,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            num_local_experts=8,
        ),
    },
}

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "page")


@dataclass(frozen=True)
class Sources:
    """Paths written by `build_sources`."""

    qwen3_vl: Path
    gpt_oss: Path
    photos: dict[str, Path]
    real_tokenizers: bool


def find_fixtures() -> Path | None:
    """Return the folder of real configs and tokenizers, or None when it is absent (a fresh clone)."""
    configured = os.environ.get(FIXTURES_ENV)
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "fixtures"
    if (candidate / QWEN_FIXTURE / "config.json").is_file() and (candidate / GPT_OSS_FIXTURE / "tokenizer.json").is_file():
        return candidate
    return None


# ---------------------------------------------------------------------------------------------
# MXFP4 encoding
# ---------------------------------------------------------------------------------------------

# E2M1 magnitudes in code order: code = sign << 3 | magnitude index.
FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MXFP4_BLOCK = 32
E8M0_BIAS = 127


def mxfp4_encode(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `weight` [..., rows, cols] as MXFP4 blocks along its last dimension.

    Returns `blocks` uint8 [..., rows, cols / 32, 16] (two E2M1 codes per byte, the even element in
    the low nibble) and `scales` uint8 [..., rows, cols / 32] (E8M0, bias 127). The shared exponent
    of a block is floor(log2(max |x|)) - 2, so the largest magnitude lands in [4, 8) and values above
    6 saturate; each scaled value then rounds to the nearest E2M1 value, ties to the even code.
    """
    if weight.shape[-1] % MXFP4_BLOCK:
        raise ValueError(f"last dimension {weight.shape[-1]} is not a multiple of {MXFP4_BLOCK}")
    values = weight.float().reshape(*weight.shape[:-1], weight.shape[-1] // MXFP4_BLOCK, MXFP4_BLOCK)

    amax = values.abs().amax(dim=-1, keepdim=True)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(2.0**-126))) - 2, torch.zeros_like(amax))
    exponent = exponent.clamp(-E8M0_BIAS, E8M0_BIAS)
    scaled = (values / torch.exp2(exponent)).abs().clamp_max(6.0).contiguous()

    # Midpoints between neighbouring magnitudes; at an exact midpoint the even index wins.
    grid = torch.tensor(FP4_MAGNITUDES, dtype=torch.float32, device=weight.device)
    midpoints = (grid[1:] + grid[:-1]) / 2
    index = torch.bucketize(scaled, midpoints, right=False)
    on_midpoint = torch.isin(scaled, midpoints)
    lower = index  # bucketize(right=False) puts a midpoint in the lower bucket
    index = torch.where(on_midpoint & (lower % 2 == 1), lower + 1, index)

    sign = (values < 0) & (index > 0)
    codes = (index | (sign.to(torch.int64) << 3)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exponent.squeeze(-1) + E8M0_BIAS).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def mxfp4_decode(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Decode MXFP4 `blocks` [..., G, 16] and `scales` [..., G] to float32 [..., G * 32]."""
    lut = torch.tensor(FP4_MAGNITUDES + tuple(-m for m in FP4_MAGNITUDES), dtype=torch.float32, device=blocks.device)
    low = lut[(blocks & 0x0F).long()]
    high = lut[(blocks >> 4).long()]
    values = torch.stack((low, high), dim=-1).reshape(*blocks.shape[:-1], MXFP4_BLOCK)
    values = values * torch.exp2(scales.float() - E8M0_BIAS).unsqueeze(-1)
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * MXFP4_BLOCK)


# ---------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------


def _random_tensor(name: str, shape: torch.Size, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A seeded tensor for one parameter: norm weights are one, everything else is N(0, 0.3).

    The spread is wider than a trained model's so that greedy decoding of these tiny random models
    varies with its input instead of repeating one token.
    """
    module, _, parameter = name.rpartition(".")
    if "norm" in module.rsplit(".", 1)[-1] and parameter == "weight":
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=generator) * 0.3).to(dtype)


def _meta_state_shapes(model_class, config) -> dict[str, tuple[torch.Size, torch.dtype]]:
    with torch.device("meta"):
        model = model_class(config)
    return {name: (tensor.shape, tensor.dtype) for name, tensor in model.state_dict().items()}


def _write_shards(folder: Path, shard_of: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` into the shard files named by `shard_of` plus model.safetensors.index.json."""
    by_shard: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        by_shard.setdefault(shard_of[name], {})[name] = tensor.contiguous()
    for shard, shard_tensors in sorted(by_shard.items()):
        save_file(shard_tensors, str(folder / shard), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Qwen3-VL source
# ---------------------------------------------------------------------------------------------

QWEN_COPIED_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
)


def qwen3_vl_config(fixtures: Path | None, size: str = "tiny") -> dict:
    """The real Qwen3-VL-4B-Instruct config with only its sizes replaced."""
    config = copy.deepcopy(real_json(fixtures, QWEN_FIXTURE, "config.json"))
    config["text_config"].update(SIZES[size]["qwen_text"])
    config["vision_config"].update(SIZES[size]["qwen_vision"])
    return config


def build_qwen3_vl_source(folder: Path, fixtures: Path | None, seed: int = 0, size: str = "tiny") -> Path:
    """Write a Qwen3-VL source folder: config, two weight shards with an index, processor and tokenizer files."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    config = qwen3_vl_config(fixtures, size)
    _write_json(folder / "config.json", config)

    shapes = _meta_state_shapes(Qwen3VLForConditionalGeneration, Qwen3VLConfig(**config))
    # The output head is tied to the input embeddings, so the Hub checkpoint does not store it.
    shapes.pop("lm_head.weight", None)
    tensors = {name: _random_tensor(name, shape, torch.bfloat16, seed) for name, (shape, _) in shapes.items()}

    # Two shards split at half the bytes, named like the Hub's (numbered from one).
    half = sum(t.numel() * t.element_size() for t in tensors.values()) / 2
    shard_of, written = {}, 0
    for name, tensor in tensors.items():
        shard_of[name] = "model-00001-of-00002.safetensors" if written < half else "model-00002-of-00002.safetensors"
        written += tensor.numel() * tensor.element_size()
    _write_shards(folder, shard_of, tensors)

    if fixtures is not None:
        for name in QWEN_COPIED_FILES:
            shutil.copyfile(fixtures / QWEN_FIXTURE / name, folder / name)
    else:
        _write_fallback_qwen_files(folder)
    (folder / "README.md").write_text("# Test-bed copy of Qwen3-VL (random weights)\n")
    return folder


# ---------------------------------------------------------------------------------------------
# gpt-oss source
# ---------------------------------------------------------------------------------------------

GPT_OSS_COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")


def gpt_oss_config(fixtures: Path | None, size: str = "tiny") -> dict:
    """The real gpt-oss-20b config with only its sizes replaced; quantization_config is kept."""
    config = copy.deepcopy(real_json(fixtures, GPT_OSS_FIXTURE, "config.json"))
    config.update(SIZES[size]["gpt_oss"])
    config["layer_types"] = config["layer_types"][: config["num_hidden_layers"]]
    return config


def gpt_oss_shard_map(fixtures: Path | None, names: list[str]) -> dict[str, str]:
    """Map each tensor name to the shard the real index puts it in."""
    real_map = real_json(fixtures, GPT_OSS_FIXTURE, "model.safetensors.index.json")["weight_map"]
    missing = [name for name in names if name not in real_map]
    if missing:
        raise ValueError(f"tensor names absent from the real gpt-oss index: {missing[:5]}")
    return {name: real_map[name] for name in names}


def gpt_oss_bf16_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random BF16 weights in transformers' GptOss layout, experts included (before MXFP4 encoding)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    plain = {key: value for key, value in config.items() if key != "quantization_config"}
    shapes = _meta_state_shapes(GptOssForCausalLM, GptOssConfig(**plain))
    return {name: _random_tensor(name, shape, torch.bfloat16, seed) for name, (shape, _) in shapes.items()}


def encode_gpt_oss_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each BF16 expert matrix with `_blocks` and `_scales` tensors as the Hub checkpoint stores them.

    transformers stores gate_up_proj as [experts, hidden, 2 * intermediate] and down_proj as
    [experts, intermediate, hidden]; the checkpoint stores [experts, out, in / 32, 16], so each
    matrix is transposed to [experts, out, in] before encoding along `in`.
    """
    encoded = {}
    for name, tensor in weights.items():
        projection = name.rsplit(".", 1)[-1]
        if projection in EXPERT_PROJECTIONS:
            blocks, scales = mxfp4_encode(tensor.transpose(1, 2))
            encoded[f"{name}_blocks"] = blocks.reshape(*scales.shape, MXFP4_BLOCK // 2)
            encoded[f"{name}_scales"] = scales
        else:
            encoded[name] = tensor
    return encoded


def build_gpt_oss_source(folder: Path, fixtures: Path | None, seed: int = 0, size: str = "tiny") -> Path:
    """Write a gpt-oss source folder with MXFP4 experts, the real shard names, and the decoy folders."""
    folder.mkdir(parents=True, exist_ok=True)
    config = gpt_oss_config(fixtures, size)
    _write_json(folder / "config.json", config)

    tensors = encode_gpt_oss_experts(gpt_oss_bf16_weights(config, seed))
    _write_shards(folder, gpt_oss_shard_map(fixtures, list(tensors)), tensors)

    if fixtures is not None:
        for name in GPT_OSS_COPIED_FILES:
            shutil.copyfile(fixtures / GPT_OSS_FIXTURE / name, folder / name)
    else:
        _write_fallback_gpt_oss_files(folder)

    # The Hub repo carries a second copy of the weights in original/ and metal/; a build must skip both.
    (folder / "original").mkdir(exist_ok=True)
    (folder / "metal").mkdir(exist_ok=True)
    if fixtures is not None:
        shutil.copyfile(fixtures / GPT_OSS_FIXTURE / "original" / "config.json", folder / "original" / "config.json")
    else:
        _write_json(folder / "original" / "config.json", {"num_hidden_layers": config["num_hidden_layers"]})
    save_file({"embedding.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}, str(folder / "original" / "model.safetensors"))
    (folder / "metal" / "model.bin").write_bytes(b"\x00" * 4096)
    (folder / "README.md").write_text("# Test-bed copy of gpt-oss (random weights)\n")
    (folder / "LICENSE").write_text("Apache License 2.0 (test-bed placeholder)\n")
    return folder


# ---------------------------------------------------------------------------------------------
# Fallback tokenizers (no real data folder)
# ---------------------------------------------------------------------------------------------

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
QWEN_FIRST_SPECIAL_ID = 151643

HARMONY_SPECIAL_TOKENS = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
    200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
    200012: "<|call|>", 200018: "<|endofprompt|>",
}  # fmt: skip
HARMONY_FIRST_SPECIAL_ID = 199998
HARMONY_LAST_SPECIAL_ID = 200018

_FALLBACK_CORPUS = (
    "The astronaut stands in front of a flag. A cat sleeps on a red blanket. A cup of coffee sits on a "
    "saucer. The rocket is on the launch pad. The page shows printed text in several columns. "
    "What is the main subject of this image? Describe the objects, their colours, counts and positions. "
    "Answer the question with a short sentence. Reasoning: low medium high. You are a helpful assistant."
)

# A chat template of our own that renders the same harmony format as the real gpt-oss template
# for the cases the project uses: developer instructions, user and assistant turns, reasoning effort.
FALLBACK_HARMONY_TEMPLATE = (
    "{%- set effort = reasoning_effort | default('medium') -%}"
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: {{ strftime_now('%Y-%m-%d') }}\n\nReasoning: {{ effort }}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    "{%- for message in messages -%}"
    "{%- if message.role in ('developer', 'system') -%}"
    "<|start|>developer<|message|># Instructions\n\n{{ message.content }}\n\n<|end|>"
    "{%- elif message.role == 'user' -%}"
    "<|start|>user<|message|>{{ message.content }}<|end|>"
    "{%- elif message.role == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)

# Renders the Qwen3-VL chat format: im_start/im_end turns and a vision_start/image_pad/vision_end
# placeholder for every image part.
# Tags right after a newline open with `{%`, not `{%-`, which would strip the newline the real template emits.
FALLBACK_QWEN_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'video' or 'video' in part -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in part -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>\n"
    "{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif -%}"
)


def _train_small_bpe(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([_FALLBACK_CORPUS] * 4, trainer=trainer)
    return tokenizer


def _padded_tokenizer_json(special_tokens: dict[int, str], filler_until: int) -> dict:
    """A trained byte-level BPE whose vocabulary is padded with unreachable filler entries so that
    each special token gets exactly the id the real tokenizer gives it."""
    data = json.loads(_train_small_bpe().to_str())
    vocab = data["model"]["vocab"]
    next_id = len(vocab)
    for token_id in range(next_id, filler_until):
        vocab[f"<|filler_{token_id}|>"] = token_id
    data["added_tokens"] = [
        {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token_id, content in sorted(special_tokens.items())
    ]  # fmt: skip
    for token_id, content in special_tokens.items():
        vocab[content] = token_id
    return data


def _write_fallback_qwen_files(folder: Path) -> None:
    specials = {QWEN_FIRST_SPECIAL_ID + i: token for i, token in enumerate(QWEN_SPECIAL_TOKENS)}
    _write_json(folder / "tokenizer.json", _padded_tokenizer_json(specials, QWEN_FIRST_SPECIAL_ID))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "unk_token": None,
            "model_max_length": 262144,
            "extra_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>",)],
        },
    )
    _write_json(folder / "chat_template.json", {"chat_template": FALLBACK_QWEN_TEMPLATE})
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
         "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0, "temperature": 0.7},
    )  # fmt: skip
    processor = {
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
    }  # fmt: skip
    _write_json(
        folder / "preprocessor_config.json",
        {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, **processor,
         "image_processor_type": "Qwen2VLImageProcessorFast"},
    )  # fmt: skip
    _write_json(
        folder / "video_preprocessor_config.json",
        {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, **processor,
         "video_processor_type": "Qwen3VLVideoProcessor"},
    )  # fmt: skip


def _write_fallback_gpt_oss_files(folder: Path) -> None:
    specials = {
        token_id: HARMONY_SPECIAL_TOKENS.get(token_id, f"<|reserved_{token_id}|>")
        for token_id in range(HARMONY_FIRST_SPECIAL_ID, HARMONY_LAST_SPECIAL_ID + 1)
    }
    _write_json(folder / "tokenizer.json", _padded_tokenizer_json(specials, HARMONY_FIRST_SPECIAL_ID))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|startoftext|>",
            "eos_token": "<|return|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": 1000000000000000019884624838656,
            "model_input_names": ["input_ids", "attention_mask"],
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"},
    )
    (folder / "chat_template.jinja").write_text(FALLBACK_HARMONY_TEMPLATE)
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999},
    )


def real_json(fixtures: Path | None, model: str, name: str) -> dict:
    """Read a real JSON file of `model` (QWEN_FIXTURE or GPT_OSS_FIXTURE) from the data folder, or
    return the built-in copy of its fields when there is no data folder."""
    if fixtures is not None:
        return json.loads((fixtures / model / name).read_text())
    return _BUILTIN_FIXTURES[model][name]()


def _builtin_qwen_config() -> dict:
    # The fields of the real Qwen3-VL-4B-Instruct config.json that a tiny model needs.
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": 151655,
        "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
            "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
            "initializer_range": 0.02, "intermediate_size": 9728, "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
            "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 151936,
        },
        "tie_word_embeddings": True,
        "video_token_id": 151656,
        "vision_config": {
            "deepstack_visual_indexes": [5, 11, 17], "depth": 24, "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 1024, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4096,
            "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 2560,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    }  # fmt: skip


def _builtin_gpt_oss_config() -> dict:
    # The fields of the real gpt-oss-20b config.json.
    return {
        "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880,
        "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
        "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
        "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                         "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "use_cache": True, "vocab_size": 201088,
    }  # fmt: skip


def _builtin_gpt_oss_index() -> dict:
    # The real index places layers 0-1 in the first shard and 2-5 in the second. The embeddings,
    # final norm and output head go in the third, and the fallback keeps that placement.
    layer_tensors = (
        "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.router.weight", "mlp.router.bias",
        "mlp.experts.gate_up_proj_blocks", "mlp.experts.gate_up_proj_scales", "mlp.experts.gate_up_proj_bias",
        "mlp.experts.down_proj_blocks", "mlp.experts.down_proj_scales", "mlp.experts.down_proj_bias",
        "self_attn.sinks", "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
        "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "self_attn.o_proj.bias",
    )  # fmt: skip
    weight_map = {}
    for layer in range(6):
        shard = "model-00000-of-00002.safetensors" if layer < 2 else "model-00001-of-00002.safetensors"
        for tensor in layer_tensors:
            weight_map[f"model.layers.{layer}.{tensor}"] = shard
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        weight_map[name] = "model-00002-of-00002.safetensors"
    return {"metadata": {}, "weight_map": weight_map}


_BUILTIN_FIXTURES = {
    QWEN_FIXTURE: {"config.json": _builtin_qwen_config},
    GPT_OSS_FIXTURE: {"config.json": _builtin_gpt_oss_config, "model.safetensors.index.json": _builtin_gpt_oss_index},
}


# ---------------------------------------------------------------------------------------------
# Photos and edge-case images
# ---------------------------------------------------------------------------------------------


def write_photos(folder: Path) -> dict[str, Path]:
    """Save scikit-image's bundled photographs: astronaut and page as PNG, the others as JPEG."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in PHOTO_NAMES:
        image = Image.fromarray(getattr(skimage.data, name)())
        path = folder / (f"{name}.png" if name in ("astronaut", "page") else f"{name}.jpg")
        image.save(path, quality=92) if path.suffix == ".jpg" else image.save(path)
        paths[name] = path
    return paths


def write_edge_case_images(folder: Path, photo: Path) -> dict[str, Path]:
    """Write images in every awkward mode and a set of broken files, all derived from `photo`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(photo).convert("RGB")
    small = base.resize((96, 64))
    paths: dict[str, Path] = {}

    def save(name: str, image, **kwargs) -> None:
        paths[name.split(".")[0]] = folder / name
        image.save(folder / name, **kwargs)

    save("one_pixel.png", base.resize((1, 1)))
    save("gray.png", small.convert("L"))
    save("gray_alpha.png", small.convert("LA"))
    save("rgba.png", _with_alpha(small))
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.info["transparency"] = 0
    save("palette.png", palette, transparency=0)
    save("cmyk.jpg", small.convert("CMYK"), quality=95)
    gray16 = np.asarray(small.convert("L"), dtype=np.uint16) * 257
    save("gray16.png", Image.fromarray(gray16))
    save("tall_strip.png", base.resize((4, 400)))

    # Pixels stored rotated, with an EXIF orientation that instructs viewers to rotate them back.
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", small.transpose(Image.Transpose.ROTATE_90), exif=exif, quality=95)
    save("upright.jpg", small, quality=95)

    frames = [small.rotate(angle) for angle in (0, 90, 180)]
    paths["animated"] = folder / "animated.gif"
    frames[0].save(paths["animated"], save_all=True, append_images=frames[1:], duration=100, loop=0)

    paths["empty"] = folder / "empty.png"
    paths["empty"].write_bytes(b"")
    paths["not_an_image"] = folder / "not_an_image.jpg"
    paths["not_an_image"].write_text("this file holds text, not an image\n")
    full = (folder / "upright.jpg").read_bytes()
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(full[: len(full) // 3])
    paths["bomb"] = folder / "bomb.png"
    paths["bomb"].write_bytes(_png_header_only(40000, 40000))
    return paths


def write_large_photo(path: Path, photo: Path, width: int = 8160, height: int = 6120) -> Path:
    """Upscale `photo` to about 50 megapixels and save it as JPEG."""
    from PIL import Image

    Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(path, quality=80)
    return path


def _with_alpha(image):
    """Make the left half of `image` fully transparent."""
    from PIL import Image

    rgba = image.convert("RGBA")
    alpha = np.zeros((image.height, image.width), dtype=np.uint8)
    alpha[:, image.width // 2 :] = 255
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` pixels: Pillow rejects it as a decompression bomb on open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def build_sources(
    folder: Path, seed: int = 0, size: str = "tiny", use_fixtures: bool = True
) -> Sources:
    """Write both model sources and the photos under `folder`."""
    folder = Path(folder)
    fixtures = find_fixtures() if use_fixtures else None
    qwen = build_qwen3_vl_source(folder / "qwen3-vl", fixtures, seed, size)
    gpt_oss = build_gpt_oss_source(folder / "gpt-oss", fixtures, seed + 1, size)
    photos = write_photos(folder / "photos")
    return Sources(qwen3_vl=qwen, gpt_oss=gpt_oss, photos=photos, real_tokenizers=fixtures is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the offline test-bed model sources.")
    parser.add_argument("output", type=Path, help="folder to write qwen3-vl/, gpt-oss/ and photos/ into")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model widths and depths")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--no-fixtures", action="store_true", help="use the built-in fallback tokenizers even when real data exists"
    )
    args = parser.parse_args(argv)
    sources = build_sources(args.output, seed=args.seed, size=args.size, use_fixtures=not args.no_fixtures)
    kind = "real" if sources.real_tokenizers else "fallback"
    sys.stdout.write(f"wrote {sources.qwen3_vl} and {sources.gpt_oss} ({kind} tokenizers)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
