#!/usr/bin/env python
"""One-call check of the unified model on a GPU machine without network access.

    python bench/gpu_check.py [--size full|tiny] [--out DIR] [--workdir DIR] [--keep] [--prepare-only]

The machine cannot download the real models, so the script writes random weights itself. At
`full` size these are Qwen3-VL-4B in BF16 (~8.9 GB) and gpt-oss-20b with MXFP4 experts
(~13.8 GB), under the real tensor and shard names. The configs are the real ones from the fixtures
folder next to the checkout, or testbed's built-in copies of them. The script then builds a folder
with build_repo.py (--link hardlink), loads it with `device_map="auto"` and measures:

  - which MXFP4 path transformers took (`model.mxfp4_path`, `model.mxfp4_reason`);
  - GPU memory after the load, and the peaks during load and generation;
  - stage-1 and stage-2 tokens per second at batch 1 and batch 8, end to end and decode only;
  - time to the first answer token, from a streamer's first put after the prompt;
  - stage-2 decode speed against the memory-bandwidth limit of the GPU.

Random weights practically never produce harmony structure, so every stage runs a fixed number
of tokens (min_new_tokens = max_new_tokens) and `answer_reserve_tokens` is 0 (one stage-2 call per
question). `--size tiny` runs the same steps at test-bed size, on the CPU when there is no GPU;
GPU-only figures then read "n/a (no GPU)". `--prepare-only` stops after the build and checks the
folder against its manifest (`build_repo.py --verify`); it needs no GPU, at either size. Results go to DIR/gpu_check.json and DIR/gpu_check.txt
(DIR defaults to $OUT, else a new temporary folder); the table is also printed last.

NOTE: only `--size tiny` (tests/test_gpu_check.py) and `--size full --prepare-only` have run so far,
both on a CPU. The CUDA code paths (weights made on the GPU, memory figures, the copy bandwidth,
the 8-minute budget at full size) have not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from offline_setup import REPO_ROOT  # noqa: E402  (sets offline mode and import paths)

import torch  # noqa: E402

import random_checkpoints  # noqa: E402
import testbed  # noqa: E402
from child import rss_parts  # noqa: E402
from timing import BATCH_PROMPTS, ModuleClock, format_bytes, machine_info  # noqa: E402

NO_GPU = "n/a (no GPU)"
SETTINGS = {
    # 7 minutes of measurement leave a margin under the 8-minute limit of one call.
    "full": {"tokens": 64, "repeats": 2, "budget_s": 420},
    "tiny": {"tokens": 8, "repeats": 1, "budget_s": 420},
}
BATCH_SIZES = (1, 8)
# Nominal peak memory bandwidth in bytes/s by GPU model; the first name contained in torch's device
# name wins, so specific names come first. NOTE: vendor figures as quoted for each model, not
# checked against a datasheet here; the measured device-to-device copy is reported beside them.
NOMINAL_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),  # 40 GB
    ("L40S", 0.864e12),
    ("A10", 0.6e12),
    ("L4", 0.3e12),
    ("T4", 0.32e12),
)


# ---------------------------------------------------------------------------------------------
# Sources and folder
# ---------------------------------------------------------------------------------------------


def model_configs(size: str, fixtures: Path | None) -> tuple[dict, dict]:
    """Return the Qwen3-VL and gpt-oss configs: the real ones at `full`, testbed's shrunk ones at `tiny`."""
    if size == "tiny":
        return testbed.qwen3_vl_config(fixtures, "tiny"), testbed.gpt_oss_config(fixtures, "tiny")
    # testbed's reader returns the real config.json, or its built-in copy when the fixtures are absent.
    qwen = copy.deepcopy(testbed.real_json(fixtures, testbed.QWEN_FIXTURE, "config.json"))
    gpt_oss = copy.deepcopy(testbed.real_json(fixtures, testbed.GPT_OSS_FIXTURE, "config.json"))
    return qwen, gpt_oss


def write_sources(workdir: Path, size: str, device: torch.device, seed: int = 0) -> dict:
    """Write both sources and the photos under `workdir`; return their paths and sizes.

    testbed writes each source at tiny size first, for the tokenizers, processor files, chat
    templates and the decoy folders of gpt-oss's Hub repo. Then config.json and the weights are replaced.
    """
    fixtures = testbed.find_fixtures()
    qwen = testbed.build_qwen3_vl_source(workdir / "qwen3-vl", fixtures, seed, "tiny")
    gpt_oss = testbed.build_gpt_oss_source(workdir / "gpt-oss", fixtures, seed + 1, "tiny")
    qwen_config, gpt_oss_config = model_configs(size, fixtures)
    (qwen / "config.json").write_text(json.dumps(qwen_config, indent=2) + "\n")
    (gpt_oss / "config.json").write_text(json.dumps(gpt_oss_config, indent=2) + "\n")

    qwen_specs = random_checkpoints.qwen3_vl_specs(qwen_config)
    qwen_bytes = random_checkpoints.write_checkpoint(
        qwen, qwen_specs, random_checkpoints.split_in_two(qwen_specs), seed, device
    )
    real_index = testbed.real_json(fixtures, testbed.GPT_OSS_FIXTURE, "model.safetensors.index.json")
    gpt_oss_specs = random_checkpoints.gpt_oss_specs(gpt_oss_config)
    gpt_oss_bytes = random_checkpoints.write_checkpoint(
        gpt_oss, gpt_oss_specs, random_checkpoints.gpt_oss_shards(gpt_oss_specs, real_index["weight_map"]),
        seed + 1, device,
    )  # fmt: skip
    if device.type == "cuda":
        # The load's placement plan reads the free GPU memory, which the allocator's cache would hide.
        torch.cuda.empty_cache()
    return {
        "qwen3_vl": str(qwen),
        "gpt_oss": str(gpt_oss),
        "photos": {name: str(path) for name, path in write_photos(workdir / "photos").items()},
        "fixtures": fixtures is not None,
        "vlm_weight_bytes": qwen_bytes,
        "llm_weight_bytes": gpt_oss_bytes,
    }


def write_photos(folder: Path) -> dict[str, Path]:
    """Write scikit-image's photos through testbed, or generated gradients of their sizes where scikit-image is missing."""
    try:
        return testbed.write_photos(folder)
    except ImportError:
        import numpy as np
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for index, (name, size) in enumerate({"astronaut": (512, 512), "chelsea": (451, 300), "coffee": (600, 400),
                                              "rocket": (640, 427), "page": (384, 191)}.items()):  # fmt: skip
            width, height = size
            gradient = np.linspace(0, 255, width * height * 3, dtype=np.float32).reshape(height, width, 3)
            paths[name] = folder / f"{name}.png"
            Image.fromarray(((gradient + 40 * index) % 256).astype(np.uint8)).save(paths[name])
        return paths


def build_folder(sources: dict, output: Path) -> float:
    """Run build_repo.py with hard links; return its wall time in seconds."""
    return _run_build_repo(["--vlm", sources["qwen3_vl"], "--llm", sources["gpt_oss"], "--output", str(output),
                            "--link", "hardlink"])  # fmt: skip


def verify_folder(folder: Path) -> float:
    """Rehash the built folder against its manifest (`build_repo.py --verify`) and return the seconds taken."""
    return _run_build_repo(["--verify", str(folder)])


def _run_build_repo(arguments: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "build_repo.py"), *arguments], capture_output=True,
                            text=True, cwd=REPO_ROOT)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"build_repo.py {arguments[0]} failed with exit code {result.returncode}:\n"
                           f"{result.stderr[-3000:]}")  # fmt: skip
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


def load_model(folder: Path, gpu: bool) -> tuple[object, dict]:
    from transformers import AutoModel

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, device_map="auto")
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    devices = {name: sorted({str(p.device) for p in part.parameters()}) for name, part in
               (("vlm", model.vlm), ("llm", model.llm))}  # fmt: skip
    info = {
        "seconds": seconds,
        "mxfp4_path": model.mxfp4_path,
        "mxfp4_reason": model.mxfp4_reason,
        "experts_implementation": getattr(model.llm.config, "_experts_implementation", None),
        "devices": devices,
        "gpu_memory_after_load_bytes": _gpu_allocated() if gpu else NO_GPU,
        "gpu_memory_peak_load_bytes": _gpu_peak() if gpu else NO_GPU,
        "rss_after_load_bytes": _rss_bytes(),
    }
    return model, info


def _gpu_allocated() -> int:
    return sum(torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count()))


def _gpu_peak() -> int:
    return sum(torch.cuda.max_memory_allocated(index) for index in range(torch.cuda.device_count()))


def _rss_bytes() -> int | None:
    try:
        return rss_parts().get("VmRSS")
    except OSError:  # Outside Linux there is no /proc.
        return None


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def fixed_tokens(tokens: int) -> dict:
    return {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "description_max_new_tokens": tokens,
        "vision_generation_kwargs": {"min_new_tokens": tokens},
        "do_sample": False,
        "return_dict": True,
    }


def decode_rate(ends: list[float], batch: int) -> float | None:
    """Compute tokens per second over the decode steps, from the end of the first forward call (the prompt) to the last."""
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return batch * (len(ends) - 1) / (ends[-1] - ends[0])


def measure_generation(model, processor, tokenizer, images: dict, batch: int, tokens: int, repeats: int,
                       gpu: bool) -> dict:  # fmt: skip
    """Measure both stages with `batch` prompts per call: one warm-up call, then `repeats` timed ones (medians)."""
    chosen = [(images[name], question) for name, question in BATCH_PROMPTS[:batch]]
    arguments = {"vlm_processor": processor, "llm_tokenizer": tokenizer, "use_description_cache": False,
                 **fixed_tokens(tokens)}  # fmt: skip
    if batch == 1:
        arguments.update(images=chosen[0][0], text_prompt=chosen[0][1])
    else:
        arguments.update(images=[image for image, _ in chosen], text_prompt=[question for _, question in chosen])

    def call():
        outputs = model.generate(**arguments)
        return outputs if isinstance(outputs, list) else [outputs]

    call()
    clock = ModuleClock({"vlm": model.vlm, "llm": model.llm})
    runs = []
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        clock.reset()
        started = time.perf_counter()
        outputs = call()
        seconds = time.perf_counter() - started
        description_tokens = sum(output.description_tokens for output in outputs)
        generated_tokens = sum(output.generated_tokens for output in outputs)
        runs.append({
            "seconds": seconds,
            "stage1_seconds": outputs[0].stage1_seconds,
            "stage2_seconds": outputs[0].stage2_seconds,
            "stage1_tokens": description_tokens,
            "stage2_tokens": generated_tokens,
            "stage1_tokens_per_s": description_tokens / outputs[0].stage1_seconds,
            "stage2_tokens_per_s": generated_tokens / outputs[0].stage2_seconds,
            "stage1_decode_tokens_per_s": decode_rate(clock.ends["vlm"], batch),
            "stage2_decode_tokens_per_s": decode_rate(clock.ends["llm"], batch),
            "stage2_first_token_seconds": clock.ends["llm"][0] - started if clock.ends["llm"] else None,
        })  # fmt: skip
    clock.remove()
    result = {"batch": batch, "tokens_per_prompt": tokens, "runs": len(runs)}
    for key in runs[0]:
        values = [run[key] for run in runs if run[key] is not None]
        result[key] = statistics.median(values) if values else None
    result["gpu_memory_peak_bytes"] = _gpu_peak() if gpu else NO_GPU
    return result


class FirstPutClock:
    """A streamer that records when it receives its first tokens after the prompt."""

    def __init__(self):
        self._prompt_seen = False
        self.first_put: float | None = None

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_put is None and value.numel() > 0:
            self.first_put = time.perf_counter()

    def end(self) -> None:
        pass


class ForcedPrefix:
    """A logits processor that makes generation start with `ids`, then leaves the scores alone."""

    def __init__(self, ids: list[int]):
        self.ids = list(ids)
        self.step = 0

    def __call__(self, input_ids, scores):
        if self.step < len(self.ids):
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.ids[self.step]] = 0.0
            scores = forced
        self.step += 1
        return scores


def measure_first_answer_token(model, processor, tokenizer, image, tokens: int, repeats: int) -> dict:
    """Measure the time from the generate call to the streamer's first answer token, at batch 1.

    Random weights practically never open the final channel, so stage 2 is made to start with
    `<|channel|>final<|message|>` and one word. The streamer then receives its first answer token
    after stage 1, the stage-2 prompt and the forced steps (`forced_prefix_tokens` in the result).
    """
    from transformers import LogitsProcessorList

    prefix = tokenizer.encode("<|channel|>final<|message|>The", add_special_tokens=False)
    runs = []
    for index in range(repeats + 1):  # the first run warms up
        streamer = FirstPutClock()
        started = time.perf_counter()
        output = model.generate(images=image, text_prompt=BATCH_PROMPTS[0][1], vlm_processor=processor, llm_tokenizer=tokenizer,
                                use_description_cache=False, streamer=streamer,
                                logits_processor=LogitsProcessorList([ForcedPrefix(prefix)]), **fixed_tokens(tokens))  # fmt: skip
        if index == 0:
            continue
        runs.append({
            "seconds": streamer.first_put - started if streamer.first_put is not None else None,
            "stage1_seconds": output.stage1_seconds,
            "answer_tokens": output.answer_tokens,
        })  # fmt: skip
    seconds = [run["seconds"] for run in runs if run["seconds"] is not None]
    return {
        "seconds": statistics.median(seconds) if seconds else None,
        "stage1_seconds": statistics.median(run["stage1_seconds"] for run in runs),
        "forced_prefix_tokens": len(prefix),
        "answer_tokens": runs[-1]["answer_tokens"],
        "runs": len(runs),
    }


# ---------------------------------------------------------------------------------------------
# Bandwidth
# ---------------------------------------------------------------------------------------------


def active_bytes_per_token(llm, folder: Path, mxfp4_path: str) -> dict:
    """Count the bytes of gpt-oss weights one decoded token reads at batch 1, in the format they were loaded in.

    Counted: every non-expert weight except the input embedding (a lookup reads one row), plus
    `num_experts_per_tok` of `num_local_experts` experts in each layer. The KV cache is left out.
    """
    experts = [module for module in llm.modules() if type(module).__name__.endswith("Experts")]
    expert_ids = {id(tensor) for module in experts for tensor in list(module.parameters()) + list(module.buffers())}
    expert_parameter_bytes = sum(t.numel() * t.element_size() for module in experts
                                 for t in list(module.parameters()) + list(module.buffers()))  # fmt: skip
    embedding = llm.get_input_embeddings().weight
    non_expert = sum(t.numel() * t.element_size() for t in list(llm.parameters()) + list(llm.buffers())
                     if id(t) not in expert_ids and t is not embedding)  # fmt: skip
    expert_bytes = expert_parameter_bytes
    if mxfp4_path == "native":
        # The MXFP4 kernels keep the packed weights outside the module's parameters; only the biases remain.
        expert_bytes += random_checkpoints.stored_expert_bytes(folder)
    config = llm.config
    active = non_expert + expert_bytes * config.num_experts_per_tok / config.num_local_experts
    return {
        "non_expert_bytes": non_expert,
        "expert_bytes": expert_bytes,
        "experts_per_token": config.num_experts_per_tok,
        "experts": config.num_local_experts,
        "active_bytes_per_token": int(active),
    }


def nominal_bandwidth(name: str) -> float | None:
    for model_name, bandwidth in NOMINAL_BANDWIDTH:
        if model_name in name:
            return bandwidth
    return None


def measured_copy_bandwidth(iterations: int = 10) -> float:
    """Measure the bytes per second read plus written by a device-to-device copy of up to 2 GiB."""
    free, _ = torch.cuda.mem_get_info()
    size = int(min(2 * 2**30, free // 8))
    source = torch.empty(size, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        target.copy_(source)
    stop.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(stop) / 1000
    del source, target
    torch.cuda.empty_cache()
    return 2 * size * iterations / seconds


def bandwidth_figures(model, folder: Path, decode_tokens_per_s: float | None, gpu: bool) -> dict:
    result = active_bytes_per_token(model.llm, folder / "llm", model.mxfp4_path)
    result["decode_tokens_per_s"] = decode_tokens_per_s
    if not gpu:
        for key in ("gpu", "nominal_bytes_per_s", "measured_copy_bytes_per_s", "bound_tokens_per_s_nominal",
                    "bound_tokens_per_s_measured", "ratio_nominal", "ratio_measured"):  # fmt: skip
            result[key] = NO_GPU
        return result
    name = torch.cuda.get_device_name(0)
    nominal = nominal_bandwidth(name)
    measured = measured_copy_bandwidth()
    result.update(gpu=name, nominal_bytes_per_s=nominal, measured_copy_bytes_per_s=measured)
    for label, bandwidth in (("nominal", nominal), ("measured", measured)):
        bound = bandwidth / result["active_bytes_per_token"] if bandwidth else None
        result[f"bound_tokens_per_s_{label}"] = bound
        result[f"ratio_{label}"] = decode_tokens_per_s / bound if bound and decode_tokens_per_s else None
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _rate(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else str(value)


def _bytes(value) -> str:
    return format_bytes(value) if isinstance(value, (int, float)) else str(value)


def render_table(results: dict) -> str:
    mode = " --prepare-only" if results.get("prepare_only") else ""
    rows = [("check", f"gpu_check --size {results['size']}{mode} on {results['device_name']}")]
    sources = results.get("sources")
    if sources:
        rows.append(("weights written", f"Qwen3-VL {_bytes(sources['vlm_weight_bytes'])}, "
                                        f"gpt-oss {_bytes(sources['llm_weight_bytes'])}"))  # fmt: skip
    load = results.get("load")
    if load:
        rows.append(("MXFP4 path", f"{load['mxfp4_path']} ({load['mxfp4_reason']})"))
        rows.append(("experts implementation", str(load["experts_implementation"])))
        rows.append(("from_pretrained", f"{load['seconds']:.1f} s; GPU memory after load {_bytes(load['gpu_memory_after_load_bytes'])}, "
                             f"peak during load {_bytes(load['gpu_memory_peak_load_bytes'])}"))  # fmt: skip

    generation = results.get("generation", {})
    for batch in BATCH_SIZES:
        run = generation.get(f"batch_{batch}")
        if run is None:
            continue
        for stage in (1, 2):
            rows.append((f"batch {batch}: stage {stage} tokens/s",
                         f"{_rate(run[f'stage{stage}_tokens_per_s'])} end to end, "
                         f"{_rate(run[f'stage{stage}_decode_tokens_per_s'])} decode"))  # fmt: skip
        rows.append((f"batch {batch}: GPU memory peak", _bytes(run["gpu_memory_peak_bytes"])))

    first = results.get("first_answer_token")
    if first and first["seconds"] is not None:
        rows.append(("time to first answer token", f"{first['seconds']:.2f} s (stage 1: {first['stage1_seconds']:.2f} s; "
                                                   f"stage 2 forced to start with the final channel, {first['forced_prefix_tokens']} "
                                                   "tokens)"))  # fmt: skip
    elif first:
        rows.append(("time to first answer token", "no answer token streamed"))

    bandwidth = results.get("bandwidth")
    if bandwidth:
        rows.append(("bytes read per stage-2 token", _bytes(bandwidth["active_bytes_per_token"])))
        sources = {"nominal": bandwidth["nominal_bytes_per_s"], "measured": bandwidth["measured_copy_bytes_per_s"]}
        for label, source in sources.items():
            ratio = bandwidth[f"ratio_{label}"]
            if ratio == NO_GPU:
                text = NO_GPU
            elif ratio is None:
                text = "n/a (bandwidth or decode rate unknown)"
            else:
                text = f"{ratio:.3f} of the limit ({_bytes(source)}/s)"
            rows.append((f"stage-2 decode / {label} bandwidth limit", text))

    rows.append(("phases", ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results["phases_s"].items())))
    for item in results.get("skipped", []):
        rows.append(("skipped", item))
    for item in results.get("notes", []):
        rows.append(("note", item))
    if results.get("error"):
        rows.append(("error", results["error"].strip().splitlines()[-1]))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def package_versions() -> dict:
    versions = {}
    for name in ("torch", "transformers", "accelerate", "safetensors", "triton", "kernels"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run_check(args, results: dict, save) -> None:
    import transformers
    from transformers import AutoProcessor, AutoTokenizer

    settings = SETTINGS[args.size]
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    phases = results["phases_s"]

    def phase_done(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = now - since
        save()
        return now

    def over_budget(step: str) -> bool:
        if time.perf_counter() - started > settings["budget_s"]:
            results["skipped"].append(f"{step}: the {settings['budget_s']} s budget was spent")
            return True
        return False

    since = time.perf_counter()
    results["sources"] = write_sources(args.workdir, args.size, device)
    since = phase_done("write weights", since)
    folder = args.workdir / "unified"
    build_folder(results["sources"], folder)
    since = phase_done("build", since)
    if args.prepare_only:
        verify_folder(folder)
        phase_done("verify", since)
        results["skipped"].append("load, generation and bandwidth: --prepare-only")
        return

    model, results["load"] = load_model(folder, gpu)
    model.config.answer_reserve_tokens = 0
    processor = AutoProcessor.from_pretrained(folder / "vlm_processor")
    tokenizer = AutoTokenizer.from_pretrained(folder / "llm_tokenizer")
    since = phase_done("load with processors", since)

    from PIL import Image

    # Random weights never write a final channel, and the model warns about that on every call. Here
    # only the fixed token counts matter, so those warnings are silenced.
    logging.getLogger(type(model).__module__).setLevel(logging.ERROR)
    results["notes"].append("the model's warnings about missing final answers are silenced (random weights write none)")
    images = {}
    for name, path in results["sources"]["photos"].items():
        with Image.open(path) as image:
            images[name] = image.convert("RGB")
    results["generation"] = {"tokens_per_stage": settings["tokens"]}
    for batch in BATCH_SIZES:
        if over_budget(f"generation at batch {batch}"):
            break
        results["generation"][f"batch_{batch}"] = measure_generation(
            model, processor, tokenizer, images, batch, settings["tokens"], settings["repeats"], gpu
        )
        save()
    if not over_budget("time to first answer token"):
        results["first_answer_token"] = measure_first_answer_token(
            model, processor, tokenizer, images["astronaut"], settings["tokens"], settings["repeats"]
        )
    since = phase_done("generation", since)

    batch_1 = results["generation"].get("batch_1") or {}
    results["bandwidth"] = bandwidth_figures(model, folder, batch_1.get("stage2_decode_tokens_per_s"), gpu)
    phase_done("bandwidth", since)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check the unified model on a GPU machine with self-made weights.")
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="full (default): the real model sizes, which need a CUDA GPU unless --prepare-only; "
                             "tiny: test-bed size, CPU or GPU")  # fmt: skip
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                        help="folder for gpu_check.json and gpu_check.txt (default: $OUT, else a new temporary folder)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="folder for weights and the built model (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder with the weights")
    parser.add_argument("--prepare-only", action="store_true",
                        help="stop after writing the weights, building the folder and verifying it (no GPU needed)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.size == "full" and not args.prepare_only and not torch.cuda.is_available():
        parser.error("--size full needs a CUDA GPU: the weights take 22.6 GB on disk and ~51 GB in memory once the "
                     "experts are dequantized. Use --size tiny, or --prepare-only, on a machine without one.")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-out-"))
    args.out.mkdir(parents=True, exist_ok=True)
    created_workdir = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-work-"))
    args.workdir.mkdir(parents=True, exist_ok=True)

    machine = machine_info()
    results = {
        "size": args.size,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "device_name": machine["gpus"][0]["name"] if machine["gpus"] else f"CPU ({machine['cpu']})",
        "machine": machine,
        "versions": package_versions(),
        "settings": SETTINGS[args.size],
        "prepare_only": args.prepare_only,
        "phases_s": {},
        "skipped": [],
        "notes": [],
        "error": None,
    }

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    started = time.perf_counter()
    try:
        run_check(args, results, save)
    except Exception:  # recorded, so that one call on a remote machine always returns its findings
        results["error"] = traceback.format_exc()
    finally:
        results["phases_s"]["total"] = time.perf_counter() - started
        if created_workdir and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    save()
    table = render_table(results)
    (args.out / "gpu_check.txt").write_text(table + "\n")
    if results["error"]:
        sys.stderr.write(results["error"])
    sys.stdout.write(f"results: {args.out / 'gpu_check.json'}\n{table}\n")
    return 1 if results["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
