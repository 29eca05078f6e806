#!/usr/bin/env python
"""Benchmarks of the unified model on the offline test bed; writes a results page (BENCHMARKS.md).

    python bench/run.py                      # full run, writes BENCHMARKS.md at the repository root
    python bench/run.py --quick --output /tmp/BENCH-quick.md

The script writes the test-bed sources and unified folders at the "tiny" and "medium" sizes into
a temporary folder and measures, at each size:

  overhead  model.generate against the same two stages called directly with transformers
  load      from_pretrained of the folder against loading both sub-models directly (time, peak RSS)
  batch     one call with 8 prompts against 8 calls with one prompt each
  cache     a follow-up question about an image whose description is cached, against the first one
  build     build_repo.py with --link hardlink against --link copy (time, bytes written)
  stages    (medium only) tokens and wall time of each stage for the astronaut photo

Every comparison interleaves its two variants round by round (bench/timing.py). Both stages
generate a fixed number of tokens (min_new_tokens = max_new_tokens), because the random test-bed
weights stop at random points otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from offline_setup import BENCH_DIR, REPO_ROOT  # noqa: E402  (sets offline mode and import paths)

import report  # noqa: E402
from child import load_variant  # noqa: E402
from timing import BATCH_PROMPTS, ModuleClock, compare, machine_info, profile_call, profile_difference  # noqa: E402
from timing import top_own_times  # noqa: E402

SIZES = ("tiny", "medium")
# Repeats are sized so that the full run takes about 10 minutes and --quick under 3 on 2 busy cores.
SETTINGS = {
    "full": {
        "tokens": 16, "warmups": 1, "repeats": 5, "batch_warmups": 1, "batch_repeats": 3,
        "load_warmups": 1, "load_repeats": 4, "baseline_repeats": 3, "build_warmups": 1, "build_repeats": 3,
        "stage_tokens": 32, "stage_repeats": 3, "profile_runs": 2,
    },
    "quick": {
        "tokens": 8, "warmups": 1, "repeats": 1, "batch_warmups": 0, "batch_repeats": 1,
        "load_warmups": 0, "load_repeats": 1, "baseline_repeats": 1, "build_warmups": 0, "build_repeats": 1,
        "stage_tokens": 8, "stage_repeats": 1, "profile_runs": 1,
    },
}  # fmt: skip
BATCH_SIZE = 8
QUESTION = "What is the main subject of this image?"
FOLLOW_UP = "What colours stand out?"
FIRST_ANSWER = "An astronaut in a white suit in front of a flag."


# ---------------------------------------------------------------------------------------------
# Test bed
# ---------------------------------------------------------------------------------------------


def prepare(size: str, workspace: Path) -> tuple[object, Path]:
    """Write the test-bed sources of `size` and build a unified folder from them with hard links."""
    import build_repo
    import testbed

    sources = testbed.build_sources(workspace / size / "sources", seed=0, size=size)
    vlm = build_repo.resolve_source("vlm", str(sources.qwen3_vl), None, None)
    llm = build_repo.resolve_source("llm", str(sources.gpt_oss), None, None)
    folder = build_repo.build(vlm, llm, workspace / size / "unified", link="hardlink", force=True)
    return sources, folder


def load_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def fixed_tokens(tokens: int) -> dict:
    """generate() arguments that make each stage emit exactly `tokens` tokens, greedily."""
    return {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "description_max_new_tokens": tokens,
        "vision_generation_kwargs": {"min_new_tokens": tokens},
        "do_sample": False,
        "return_dict": True,
    }


# ---------------------------------------------------------------------------------------------
# (a) generate against the two stages called directly
# ---------------------------------------------------------------------------------------------


def direct_stages(model, processor, tokenizer, image, question: str, tokens: int) -> tuple[str, int, list[int]]:
    """Run both stages with transformers alone: one VLM generate, one LLM generate, `tokens` each.

    Returns the description, the number of stage-1 tokens generated and the stage-2 token ids.

    The prompts come from the product's prompt builders, which only format strings, so both sides
    decode the same token sequences. The benchmark checks this on the last round.
    """
    import torch
    from unified_prompts import VisualDescription, build_answer_messages, build_vision_messages, vision_prompt_text

    config = model.config
    prompt = vision_prompt_text(config.vision_prompt, question, "image")
    text = processor.apply_chat_template(build_vision_messages(prompt, images=1), add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    output = model.vlm.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    generated = output[0, inputs["input_ids"].shape[1] :]
    description = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()

    messages = build_answer_messages(question, [VisualDescription("Image", description)], config.developer_prompt)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         reasoning_effort=config.reasoning_effort)  # fmt: skip
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    output = model.llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False)  # fmt: skip
    return description, len(generated), output[0, ids.shape[1] :].tolist()


def measure_overhead(model, processor, tokenizer, image, settings: dict) -> dict:
    tokens = settings["tokens"]

    def product():
        return model.generate(images=image, text_prompt=QUESTION, vlm_processor=processor, llm_tokenizer=tokenizer,
                              use_description_cache=False, **fixed_tokens(tokens))  # fmt: skip

    def direct():
        return direct_stages(model, processor, tokenizer, image, QUESTION, tokens)

    comparison = compare(("generate", product), ("direct", direct), settings["warmups"], settings["repeats"])
    output = comparison.last_results["generate"]
    description, description_tokens, reply = comparison.last_results["direct"]
    return {
        "tokens": tokens,
        "comparison": comparison.to_dict(),
        "same_description": output.descriptions[0].text == description,
        "same_reply": output.llm_output_ids == reply,
        "product_tokens": [output.description_tokens, output.generated_tokens],
        "direct_tokens": [description_tokens, len(reply)],
        "profile": profile_difference(product, direct, settings["profile_runs"]),
    }


# ---------------------------------------------------------------------------------------------
# (c) batch of prompts against sequential calls
# ---------------------------------------------------------------------------------------------


def measure_batch(model, processor, tokenizer, photos: dict, settings: dict) -> dict:
    tokens = settings["tokens"]
    images = [load_rgb(photos[name]) for name, _ in BATCH_PROMPTS]
    questions = [question for _, question in BATCH_PROMPTS]
    common = {"vlm_processor": processor, "llm_tokenizer": tokenizer, "use_description_cache": False,
              **fixed_tokens(tokens)}  # fmt: skip

    # Forward hooks time the modules during every round; the snapshot of each variant's last run is kept.
    clock = ModuleClock(_stage_modules(model))
    breakdown: dict[str, dict] = {}

    def timed_parts(name: str, run):
        clock.reset()
        started = time.perf_counter()
        outputs = run()
        breakdown[name] = {
            "seconds": time.perf_counter() - started,
            # A batch shares one stage time; sequential calls add theirs up.
            "stage1_seconds": sum(o.stage1_seconds for o in outputs) if name == "sequential" else outputs[0].stage1_seconds,
            "stage2_seconds": sum(o.stage2_seconds for o in outputs) if name == "sequential" else outputs[0].stage2_seconds,
            "modules": dict(clock.seconds),
            "module_calls": dict(clock.calls),
        }
        return outputs

    def batch():
        return timed_parts("batch", lambda: model.generate(images=images, text_prompt=questions, **common))

    def sequential():
        return timed_parts("sequential", lambda: [model.generate(images=image, text_prompt=question, **common)
                                                  for image, question in zip(images, questions)])  # fmt: skip

    comparison = compare(("batch", batch), ("sequential", sequential), settings["batch_warmups"], settings["batch_repeats"])
    clock.remove()
    outputs = comparison.last_results["batch"]
    throughput = [1 / ratio for ratio in comparison.ratios]
    result = {
        "tokens": tokens,
        "prompts": len(questions),
        "photos": len({name for name, _ in BATCH_PROMPTS}),
        "comparison": comparison.to_dict(),
        "throughput_ratio": statistics.median(throughput),
        "throughput_ratio_min": min(throughput),
        "throughput_ratio_max": max(throughput),
        "tokens_per_prompt": [[o.description_tokens, o.generated_tokens] for o in outputs],
        "breakdown": breakdown,
    }
    if result["throughput_ratio"] < report.BATCH_TARGET:
        result["batch_profile"] = top_own_times(profile_call(lambda: model.generate(images=images, text_prompt=questions,
                                                                                     **common)))  # fmt: skip
    return result


def _stage_modules(model) -> dict:
    return {"vision encoder": model.vlm.model.visual, "VLM decoder": model.vlm.model.language_model,
            "LLM": model.llm}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# (d) follow-up question about a cached image
# ---------------------------------------------------------------------------------------------


def measure_cache(model, processor, tokenizer, image, settings: dict) -> dict:
    tokens = settings["tokens"]
    first_turn = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    follow_up = first_turn + [{"role": "assistant", "content": FIRST_ANSWER}, {"role": "user", "content": FOLLOW_UP}]
    common = {"vlm_processor": processor, "llm_tokenizer": tokenizer, **fixed_tokens(tokens)}

    # The follow-up depends on the first question's cache entry, so the order stays first, follow-up.
    comparison = compare(
        ("first", lambda: model.chat(first_turn, **common)),
        ("follow-up", lambda: model.chat(follow_up, **common)),
        settings["warmups"], settings["repeats"], alternate=False, before_round=model.description_cache.clear,
    )  # fmt: skip
    ratios = [1 / ratio for ratio in comparison.ratios]
    first, follow = comparison.last_results["first"], comparison.last_results["follow-up"]
    result = {
        "tokens": tokens,
        "comparison": comparison.to_dict(),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "outputs": {name: _output_summary(output) for name, output in (("first", first), ("follow-up", follow))},
    }
    if result["ratio"] > report.CACHE_TARGET:
        model.description_cache.clear()
        model.chat(first_turn, **common)
        result["follow_up_profile"] = top_own_times(profile_call(lambda: model.chat(follow_up, **common)))
    return result


def _output_summary(output) -> dict:
    return {
        "cached_descriptions": output.cached_descriptions,
        "description_tokens": output.description_tokens,
        "prompt_tokens": output.prompt_tokens,
        "generated_tokens": output.generated_tokens,
        "stage1_seconds": output.stage1_seconds,
        "stage2_seconds": output.stage2_seconds,
    }


# ---------------------------------------------------------------------------------------------
# (f) tokens and time per stage for one photo
# ---------------------------------------------------------------------------------------------


def measure_stages(model, processor, tokenizer, photo: Path, settings: dict) -> dict:
    from unified_prompts import build_vision_messages, vision_prompt_text

    tokens = settings["stage_tokens"]
    image = load_rgb(photo)
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    merge = processor.image_processor.merge_size
    prompt = vision_prompt_text(model.config.vision_prompt, QUESTION, "image")
    text = processor.apply_chat_template(build_vision_messages(prompt, images=1), add_generation_prompt=True, tokenize=False)
    stage1_prompt_tokens = processor(text=[text], images=[image], return_tensors="pt")["input_ids"].shape[1]

    clock = ModuleClock({"vision encoder": model.vlm.model.visual})
    runs = []
    for index in range(settings["stage_repeats"] + 1):
        clock.reset()
        output = model.generate(images=image, text_prompt=QUESTION, vlm_processor=processor, llm_tokenizer=tokenizer,
                                use_description_cache=False, **fixed_tokens(tokens))  # fmt: skip
        if index > 0:  # the first run warms up
            runs.append({**_output_summary(output), "vision_encoder_seconds": clock.seconds["vision encoder"]})
    clock.remove()
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {
        "photo": photo.name,
        "image_size": list(image.size),
        "pixel_budget": processor.image_processor.size.get("longest_edge"),
        "patch_grid": [int(value) for value in grid],
        "visual_tokens": int(grid.prod()) // merge**2,
        "stage1_prompt_tokens": int(stage1_prompt_tokens),
        "tokens": tokens,
        "runs": len(runs),
        "medians": medians,
    }


# ---------------------------------------------------------------------------------------------
# (b) and (e): measurements in child processes
# ---------------------------------------------------------------------------------------------


def run_child(*args: str) -> dict:
    command = [sys.executable, str(BENCH_DIR / "child.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_load(folder: Path, settings: dict) -> dict:
    baseline = [run_child("load", "none", str(folder)) for _ in range(settings["baseline_repeats"])]
    comparison = compare(
        ("unified", lambda: run_child("load", "unified", str(folder))),
        ("direct", lambda: run_child("load", "direct", str(folder))),
        settings["load_warmups"], settings["load_repeats"], seconds_of=lambda result: result["seconds"],
    )  # fmt: skip
    runs = comparison.results
    result = {
        "comparison": comparison.to_dict(),
        "baseline_rss_bytes": statistics.median(run["before_load"]["VmRSS"] for run in baseline),
        "baseline_process_peak_rss_bytes": statistics.median(run["process_peak_rss_bytes"] for run in baseline),
    }
    for variant in ("unified", "direct"):
        last = runs[variant][-1]
        result[variant] = {
            "load_peak_rss_bytes": statistics.median(run["load_peak_rss_bytes"] for run in runs[variant]),
            "process_peak_rss_bytes": statistics.median(run["process_peak_rss_bytes"] for run in runs[variant]),
            "peak_was_reset": all(run["peak_was_reset"] for run in runs[variant]),
            "weight_bytes": last["weight_bytes"],
            "rss_before_load": last["before_load"],
            "rss_after_load": last["after_load"],
        }
    return result


def profile_load(folder: Path, runs: int) -> dict:
    """Profile both loads in this process, where every module they import is already loaded."""
    return profile_difference(lambda: load_variant("unified", folder), lambda: load_variant("direct", folder), runs)


def measure_build(sources, settings: dict, workspace: Path) -> dict:
    def build(link: str):
        output = workspace / f"build-{link}"
        try:
            return run_child("build", link, str(sources.qwen3_vl), str(sources.gpt_oss), str(output))
        finally:
            shutil.rmtree(output, ignore_errors=True)

    comparison = compare(
        ("hardlink", lambda: build("hardlink")), ("copy", lambda: build("copy")),
        settings["build_warmups"], settings["build_repeats"], seconds_of=lambda result: result["seconds"],
    )  # fmt: skip
    result = {"comparison": comparison.to_dict()}
    for link in ("hardlink", "copy"):
        runs = comparison.results[link]
        result[link] = {key: statistics.median(run[key] for run in runs)
                        for key in ("write_chars", "write_bytes", "folder_bytes", "unshared_bytes")}  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def measure_size(size: str, workspace: Path, settings: dict, log) -> dict:
    import transformers
    from transformers import AutoProcessor, AutoTokenizer

    from modeling_unified import UnifiedMultimodalModel

    log(f"[{size}] writing test-bed sources and building the unified folder")
    sources, folder = prepare(size, workspace)
    results: dict = {"folder_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}

    log(f"[{size}] (b) load: from_pretrained against direct sub-model loads, in child processes")
    results["load"] = measure_load(folder, settings)
    log(f"[{size}] (e) build: --link hardlink against --link copy, in child processes")
    results["build"] = measure_build(sources, settings, workspace)

    transformers.utils.logging.disable_progress_bar()
    model = UnifiedMultimodalModel.from_pretrained(folder)
    # With a reserve, a reply that reaches the budget gets a second stage-2 call. Fixed token counts
    # always reach it and the direct path makes one call, so the reserve is off for every measurement.
    model.config.answer_reserve_tokens = 0
    processor = AutoProcessor.from_pretrained(folder / "vlm_processor")
    tokenizer = AutoTokenizer.from_pretrained(folder / "llm_tokenizer")
    astronaut = load_rgb(sources.photos["astronaut"])
    results["model"] = {
        "mxfp4_path": model.mxfp4_path,
        "mxfp4_reason": model.mxfp4_reason,
        "experts_implementation": getattr(model.llm.config, "_experts_implementation", None),
    }

    log(f"[{size}] (a) overhead: generate against the two stages called directly")
    results["overhead"] = measure_overhead(model, processor, tokenizer, astronaut, settings)
    log(f"[{size}] (c) batch: {BATCH_SIZE} prompts in one call against {BATCH_SIZE} calls")
    results["batch"] = measure_batch(model, processor, tokenizer, sources.photos, settings)
    log(f"[{size}] (d) cache: follow-up question against the first question")
    results["cache"] = measure_cache(model, processor, tokenizer, astronaut, settings)
    if size == "medium":
        log(f"[{size}] (f) stages: tokens and seconds per stage for the astronaut photo")
        results["stages"] = measure_stages(model, processor, tokenizer, sources.photos["astronaut"], settings)
    del model

    if report.load_time_missed(results["load"]):
        log(f"[{size}] (b) profiling the load of each variant")
        results["load"]["profile"] = profile_load(folder, settings["profile_runs"])
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the unified model on the offline test bed.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens: a check that runs in ~3 min")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="results page to write")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON to this file")
    parser.add_argument("--keep", type=Path, help="write the test bed into this folder and keep it (its folders are replaced)")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="test-bed sizes to measure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers\..*")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    # The model's own logger reports each answer-less reply, which random weights always produce.
    logging.getLogger("modeling_unified").setLevel(logging.ERROR)

    def log(message: str) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        sys.stderr.flush()

    started = time.perf_counter()
    results = {
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": mode,
        "settings": settings,
        "machine": machine_info(),
        "sizes": {},
    }
    workspace = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="unified-bench-"))
    workspace.mkdir(parents=True, exist_ok=True)
    try:
        for size in args.sizes:
            results["sizes"][size] = measure_size(size, workspace, settings, log)
    finally:
        if not args.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    results["duration_s"] = time.perf_counter() - started
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    args.output.write_text(report.render_page(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    sys.stdout.write(report.render_table(results) + "\n")
    log(f"wrote {args.output} in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
