"""Random-weight checkpoints of Qwen3-VL and gpt-oss at any size, written fast enough for the real ones.

tests/testbed.py builds every tensor on the CPU and encodes gpt-oss's experts from BF16, which is
fine for test-bed widths but far too slow for gpt-oss-20b (its experts are ~38 GB in BF16). Here
each tensor is generated directly in its stored format (BF16, or uint8 MXFP4 codes and scales) on
the fastest device available and streamed into the safetensors file, so that at most one tensor is
in memory at a time. Tensor names, shapes and shard names are those of the Hub checkpoints.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8"}
MXFP4_BLOCK = 32  # values per MXFP4 block, sharing one E8M0 scale
# E8M0 scales 118..124 put block magnitudes at 2^-9..2^-3 times the FP4 values (at most 6), a
# spread that keeps random activations finite through 24 layers.
SCALE_RANGE = (118, 125)
WEIGHT_STD = 0.02
EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


# ---------------------------------------------------------------------------------------------
# Tensor lists
# ---------------------------------------------------------------------------------------------


def _meta_state(model_class, config) -> dict[str, tuple[torch.Size, torch.dtype]]:
    # Built on the meta device: shapes only, no memory, in about a second even at full size.
    with torch.device("meta"):
        model = model_class(config)
    return {name: (tensor.shape, tensor.dtype) for name, tensor in model.state_dict().items()}


def qwen3_vl_specs(config: dict) -> list[TensorSpec]:
    """Tensors of a Qwen3-VL checkpoint, all BF16; the tied output head is not stored, as on the Hub."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    state = _meta_state(Qwen3VLForConditionalGeneration, Qwen3VLConfig(**config))
    if config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")):
        state.pop("lm_head.weight", None)
    return [TensorSpec(name, tuple(shape), torch.bfloat16) for name, (shape, _) in state.items()]


def gpt_oss_specs(config: dict) -> list[TensorSpec]:
    """Tensors of a gpt-oss checkpoint: experts as MXFP4 `_blocks` and `_scales` (uint8), the rest BF16.

    transformers holds gate_up_proj as [experts, hidden, 2 * intermediate] and down_proj as
    [experts, intermediate, hidden]; the checkpoint stores each as [experts, out, in / 32, 16]
    blocks (two FP4 codes per byte) with [experts, out, in / 32] scales.
    """
    from transformers import GptOssConfig, GptOssForCausalLM

    plain = {key: value for key, value in config.items() if key != "quantization_config"}
    specs = []
    for name, (shape, _) in _meta_state(GptOssForCausalLM, GptOssConfig(**plain)).items():
        if name.rsplit(".", 1)[-1] in EXPERT_PROJECTIONS:
            experts, inputs, outputs = shape
            if inputs % MXFP4_BLOCK:
                raise ValueError(f"{name}: input size {inputs} is not a multiple of the MXFP4 block {MXFP4_BLOCK}")
            groups = inputs // MXFP4_BLOCK
            specs.append(TensorSpec(f"{name}_blocks", (experts, outputs, groups, MXFP4_BLOCK // 2), torch.uint8))
            specs.append(TensorSpec(f"{name}_scales", (experts, outputs, groups), torch.uint8))
        else:
            specs.append(TensorSpec(name, tuple(shape), torch.bfloat16))
    return specs


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def split_in_two(specs: list[TensorSpec]) -> dict[str, str]:
    """Two shards split at half the bytes, named like the Qwen3-VL Hub files (numbered from one)."""
    half = sum(spec.nbytes for spec in specs) / 2
    shard_of, written = {}, 0
    for spec in specs:
        shard_of[spec.name] = "model-00001-of-00002.safetensors" if written < half else "model-00002-of-00002.safetensors"
        written += spec.nbytes
    return shard_of


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def gpt_oss_shards(specs: list[TensorSpec], real_map: dict[str, str] | None) -> dict[str, str]:
    """Shard of each gpt-oss tensor: the real index's where it names them all, else the same layout rebuilt.

    The real gpt-oss-20b index orders the layers by their number as text (0, 1, 10, ..., 19, 2, 20,
    ...) and puts the embeddings, final norm and output head last. It cuts that sequence into three
    shards of about equal bytes, numbered from zero. The fallback applies the same rule, and at full
    size its cuts land within one layer of the real ones.
    """
    if real_map is not None and all(spec.name in real_map for spec in specs):
        return {spec.name: real_map[spec.name] for spec in specs}

    def order(spec: TensorSpec) -> tuple:
        match = _LAYER.match(spec.name)
        return (0, match.group(1), spec.name) if match else (1, "", spec.name)

    total = sum(spec.nbytes for spec in specs)
    shard_of, written = {}, 0
    for spec in sorted(specs, key=order):
        shard = min(2, int(3 * written / total))
        shard_of[spec.name] = f"model-0000{shard}-of-00002.safetensors"
        written += spec.nbytes
    return shard_of


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def random_tensor(spec: TensorSpec, seed: int, device: torch.device) -> torch.Tensor:
    """Make a seeded random tensor for one checkpoint entry on `device`.

    Norm weights are one; MXFP4 blocks are uniform random bytes (two random FP4 codes each) and
    scales uniform in SCALE_RANGE; everything else is N(0, WEIGHT_STD).
    """
    generator = torch.Generator(device=device).manual_seed(seed + zlib.crc32(spec.name.encode()))
    module, _, parameter = spec.name.rpartition(".")
    if spec.name.endswith("_blocks"):
        return torch.randint(0, 256, spec.shape, generator=generator, dtype=torch.uint8, device=device)
    if spec.name.endswith("_scales"):
        low, high = SCALE_RANGE
        return torch.randint(low, high, spec.shape, generator=generator, dtype=torch.uint8, device=device)
    if "norm" in module.rsplit(".", 1)[-1] and parameter == "weight":
        return torch.ones(spec.shape, dtype=spec.dtype, device=device)
    values = torch.randn(spec.shape, generator=generator, dtype=torch.float32, device=device)
    return values.mul_(WEIGHT_STD).to(spec.dtype)


def write_safetensors(path: Path, specs: list[TensorSpec], make: Callable[[TensorSpec], torch.Tensor]) -> int:
    """Write one safetensors file, producing each tensor with `make` only when its turn comes.

    Layout (the safetensors format): an 8-byte little-endian header length, a JSON header padded
    with spaces to a multiple of 8 bytes, then the tensors back to back in header order.
    Returns the bytes written.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}  # fmt: skip
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for spec in specs:
            tensor = make(spec)
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(f"{spec.name}: made {tuple(tensor.shape)} {tensor.dtype}, expected {spec.shape} {spec.dtype}")
            raw = tensor.contiguous().view(torch.uint8).reshape(-1).cpu().numpy()
            handle.write(memoryview(raw))
    partial.replace(path)
    return 8 + len(encoded) + offset


def write_checkpoint(
    folder: Path, specs: list[TensorSpec], shard_of: dict[str, str], seed: int, device: torch.device
) -> int:
    """Replace the weights in `folder` with random ones: shards plus model.safetensors.index.json.

    Returns the bytes of tensor data written.
    """
    for old in list(folder.glob("*.safetensors")) + [folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    by_shard: dict[str, list[TensorSpec]] = {}
    for spec in specs:
        by_shard.setdefault(shard_of[spec.name], []).append(spec)
    for shard, shard_specs in sorted(by_shard.items()):
        write_safetensors(folder / shard, shard_specs, lambda spec: random_tensor(spec, seed, device))
    total = sum(spec.nbytes for spec in specs)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return total


def read_header(path: Path) -> dict:
    """Read the JSON header of a safetensors file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def stored_expert_bytes(folder: Path) -> int:
    """Bytes of the MXFP4 expert tensors (`_blocks` and `_scales`) stored in a checkpoint folder."""
    index = json.loads((folder / INDEX_NAME).read_text())
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        for name, entry in read_header(folder / shard).items():
            if name != "__metadata__" and name.endswith(("_blocks", "_scales")):
                total += entry["data_offsets"][1] - entry["data_offsets"][0]
    return total
