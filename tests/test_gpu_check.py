"""bench/gpu_check.py: its random checkpoints, and one whole run at test-bed size (marked slow)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import testbed

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH_DIR))

import random_checkpoints  # noqa: E402

NO_GPU = "n/a (no GPU)"
REAL_SHARDS = {f"model-0000{index}-of-00002.safetensors" for index in range(3)}


@pytest.fixture(scope="module")
def full_gpt_oss_specs():
    # The built-in copy of the real config, so that this runs without ../shared/fixtures too.
    config = testbed.real_json(None, testbed.GPT_OSS_FIXTURE, "config.json")
    return random_checkpoints.gpt_oss_specs(config)


# ---------------------------------------------------------------------------------------------
# Random checkpoints
# ---------------------------------------------------------------------------------------------


def test_full_gpt_oss_matches_real_index(full_gpt_oss_specs, fixtures_dir):
    index = json.loads((fixtures_dir / testbed.GPT_OSS_FIXTURE / "model.safetensors.index.json").read_text())
    assert {spec.name for spec in full_gpt_oss_specs} == set(index["weight_map"])
    assert sum(spec.nbytes for spec in full_gpt_oss_specs) == index["metadata"]["total_size"]


def test_full_qwen_size():
    config = testbed.real_json(None, testbed.QWEN_FIXTURE, "config.json")
    specs = random_checkpoints.qwen3_vl_specs(config)
    names = {spec.name for spec in specs}
    assert "lm_head.weight" not in names
    assert "model.language_model.layers.35.mlp.down_proj.weight" in names
    assert 8.8e9 < sum(spec.nbytes for spec in specs) < 8.9e9


def test_fallback_shards_full_size(full_gpt_oss_specs):
    shard_of = random_checkpoints.gpt_oss_shards(full_gpt_oss_specs, None)
    assert set(shard_of.values()) == REAL_SHARDS
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert shard_of[name] == "model-00002-of-00002.safetensors"
    sizes = {shard: 0 for shard in REAL_SHARDS}
    for spec in full_gpt_oss_specs:
        sizes[shard_of[spec.name]] += spec.nbytes
    assert max(sizes.values()) < 1.2 * min(sizes.values())


def test_fallback_shards_when_index_lacks_layers(full_gpt_oss_specs):
    # testbed's built-in index names layers 0-5 only, fewer than the 24 of the full model.
    partial = testbed.real_json(None, testbed.GPT_OSS_FIXTURE, "model.safetensors.index.json")["weight_map"]
    shard_of = random_checkpoints.gpt_oss_shards(full_gpt_oss_specs, partial)
    assert shard_of == random_checkpoints.gpt_oss_shards(full_gpt_oss_specs, None)


def test_safetensors_round_trip(tmp_path):
    from safetensors import safe_open

    specs = [
        random_checkpoints.TensorSpec("model.layers.0.mlp.experts.down_proj_blocks", (2, 8, 3, 16), torch.uint8),
        random_checkpoints.TensorSpec("model.layers.0.mlp.experts.down_proj_scales", (2, 8, 3), torch.uint8),
        random_checkpoints.TensorSpec("model.layers.0.input_layernorm.weight", (8,), torch.bfloat16),
        random_checkpoints.TensorSpec("model.layers.0.self_attn.q_proj.weight", (5, 8), torch.bfloat16),
    ]
    path = tmp_path / "shard.safetensors"
    cpu = torch.device("cpu")
    written = random_checkpoints.write_safetensors(path, specs, lambda spec: random_checkpoints.random_tensor(spec, 3, cpu))
    assert written == path.stat().st_size
    with safe_open(str(path), framework="pt") as handle:
        for spec in specs:
            assert torch.equal(handle.get_tensor(spec.name), random_checkpoints.random_tensor(spec, 3, cpu))
        scales = handle.get_tensor(specs[1].name)
        norm = handle.get_tensor(specs[2].name)
    low, high = random_checkpoints.SCALE_RANGE
    assert int(scales.min()) >= low
    assert int(scales.max()) < high
    assert torch.equal(norm, torch.ones(8, dtype=torch.bfloat16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_full_size_rejected_without_gpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "gpu_check.py"), "--size", "full", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--size full needs a CUDA GPU" in result.stderr
    assert "--prepare-only" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# One run at test-bed size
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "gpu_check.py"), "--size", "tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )  # fmt: skip
    return result, out


@pytest.fixture(scope="module")
def tiny_results(tiny_run):
    result, out = tiny_run
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_tiny_run_completes(tiny_run, tiny_results):
    result, out = tiny_run
    assert tiny_results["error"] is None
    assert tiny_results["skipped"] == []
    table = (out / "gpu_check.txt").read_text()
    assert "MXFP4 path" in table
    assert result.stdout.rstrip().endswith(table.rstrip())
    # The model's warnings about missing final answers are silenced, and the table notes it.
    assert "no final answer" not in result.stderr
    assert "warnings about missing final answers are silenced" in table


@pytest.mark.slow
def test_tiny_run_load(tiny_results):
    load = tiny_results["load"]
    assert load["seconds"] > 0
    assert load["mxfp4_reason"]
    if tiny_results["device"] == "cpu":
        assert load["mxfp4_path"] == "dequantized"
        assert load["gpu_memory_after_load_bytes"] == NO_GPU
        assert load["devices"] == {"vlm": ["cpu"], "llm": ["cpu"]}
    else:
        assert load["mxfp4_path"] in ("native", "dequantized")
        assert load["gpu_memory_peak_load_bytes"] >= load["gpu_memory_after_load_bytes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8])
def test_tiny_run_rates(tiny_results, batch):
    tokens = tiny_results["generation"]["tokens_per_stage"]
    run = tiny_results["generation"][f"batch_{batch}"]
    assert run["stage1_tokens"] == tokens * batch
    assert run["stage2_tokens"] == tokens * batch
    for key in ("stage1_tokens_per_s", "stage2_tokens_per_s", "stage1_decode_tokens_per_s",
                "stage2_decode_tokens_per_s"):  # fmt: skip
        assert run[key] > 0, key
    assert 0 < run["stage2_first_token_seconds"] < run["seconds"]


@pytest.mark.slow
def test_tiny_run_first_answer_token(tiny_results):
    first = tiny_results["first_answer_token"]
    assert first["seconds"] > first["stage1_seconds"] > 0
    assert first["answer_tokens"] > 0


@pytest.mark.slow
def test_tiny_run_bandwidth(tiny_results):
    bandwidth = tiny_results["bandwidth"]
    everything = bandwidth["non_expert_bytes"] + bandwidth["expert_bytes"]
    assert bandwidth["non_expert_bytes"] < bandwidth["active_bytes_per_token"] < everything
    assert bandwidth["decode_tokens_per_s"] > 0
    if tiny_results["device"] == "cpu":
        assert bandwidth["ratio_nominal"] == NO_GPU
        assert bandwidth["measured_copy_bytes_per_s"] == NO_GPU
    else:
        assert 0 < bandwidth["ratio_measured"] < 1.5


@pytest.mark.slow
def test_tiny_prepare_only(tmp_path):
    out, workdir = tmp_path / "out", tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "gpu_check.py"), "--size", "tiny", "--prepare-only", "--out", str(out),
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["error"] is None
    assert "load" not in results
    assert "generation" not in results
    assert list(results["phases_s"]) == ["write weights", "build", "verify", "total"]
    assert results["skipped"] == ["load, generation and bandwidth: --prepare-only"]
    for role, folder in (("vlm", "qwen3-vl"), ("llm", "gpt-oss")):
        # Tensor data: each shard's size less its 8-byte length field and JSON header.
        on_disk = sum(path.stat().st_size - 8 - struct.unpack("<Q", path.read_bytes()[:8])[0]
                      for path in (workdir / folder).glob("*.safetensors"))  # fmt: skip
        assert results["sources"][f"{role}_weight_bytes"] == on_disk
    # The build hard-linked the shards it verified.
    built = sorted((workdir / "unified" / "llm").glob("*.safetensors"))
    assert built and all(path.stat().st_nlink == 2 for path in built)
