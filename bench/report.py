"""Render bench/run.py's results as a Markdown page and as a short plain-text table.

Every figure and finding on the page is filled in from a measured value, and the verdicts compare
those values with the targets below. The method paragraph describes what bench/run.py does.
"""

from __future__ import annotations

from timing import format_bytes

OVERHEAD_TARGET = 1.02  # generate time / direct stages time, at medium size
LOAD_TIME_TARGET = 1.05  # from_pretrained time / direct loads time
LOAD_RSS_TARGET = 1.10  # peak RSS above the import baseline / bytes of the loaded tensors
BATCH_TARGET = 3.0  # throughput of one batch call / throughput of sequential calls
CACHE_TARGET = 0.6  # follow-up time / first question time

MET, MISSED, NO_TARGET = "met", "not met", "no target"


def verdict(value: float, target: float, at_most: bool) -> str:
    return MET if (value <= target if at_most else value >= target) else MISSED


def load_time_missed(load: dict) -> bool:
    return verdict(load["comparison"]["ratio_median"], LOAD_TIME_TARGET, True) == MISSED


def load_rss_ratios(load: dict) -> dict:
    """Peak RSS during each load over its tensor bytes: raw, and above the RSS of an import-only process."""
    baseline = load["baseline_rss_bytes"]
    ratios = {}
    for variant in ("unified", "direct"):
        peak, weights = load[variant]["load_peak_rss_bytes"], load[variant]["weight_bytes"]
        ratios[variant] = {"raw": peak / weights, "above_baseline": (peak - baseline) / weights}
    return ratios


def summary_rows(results: dict) -> list[dict]:
    """List one row per figure: what, size, value, target and verdict."""
    rows = []
    for size, measured in results["sizes"].items():
        overhead = measured["overhead"]["comparison"]["ratio_median"]
        rows.append({
            "figure": "(a) generate / direct stages, time", "size": size, "value": f"{overhead:.3f}x",
            "target": f"<= {OVERHEAD_TARGET}x at medium",
            "verdict": verdict(overhead, OVERHEAD_TARGET, True) if size == "medium" else NO_TARGET,
        })  # fmt: skip
        load = measured["load"]
        load_ratio = load["comparison"]["ratio_median"]
        rows.append({"figure": "(b) from_pretrained / direct loads, time", "size": size, "value": f"{load_ratio:.3f}x",
                     "target": f"<= {LOAD_TIME_TARGET}x", "verdict": verdict(load_ratio, LOAD_TIME_TARGET, True)})  # fmt: skip
        rss = load_rss_ratios(load)["unified"]
        rows.append({
            "figure": "(b) peak RSS above import baseline / tensor bytes", "size": size,
            "value": f"{rss['above_baseline']:.3f}x (raw {rss['raw']:.2f}x)", "target": f"<= {LOAD_RSS_TARGET}x",
            "verdict": verdict(rss["above_baseline"], LOAD_RSS_TARGET, True),
        })  # fmt: skip
        batch = measured["batch"]["throughput_ratio"]
        rows.append({"figure": "(c) batch of 8 / 8 calls, throughput", "size": size, "value": f"{batch:.2f}x",
                     "target": f">= {BATCH_TARGET}x", "verdict": verdict(batch, BATCH_TARGET, False)})  # fmt: skip
        cache = measured["cache"]["ratio"]
        rows.append({"figure": "(d) cached follow-up / first question, time", "size": size, "value": f"{cache:.3f}x",
                     "target": f"<= {CACHE_TARGET}x", "verdict": verdict(cache, CACHE_TARGET, True)})  # fmt: skip
        build = measured["build"]
        rows.append({
            "figure": "(e) build hardlink / copy, time", "size": size,
            "value": f"{build['comparison']['ratio_median']:.3f}x; new bytes {format_bytes(build['hardlink']['unshared_bytes'])}"
                     f" vs {format_bytes(build['copy']['unshared_bytes'])}",
            "target": "none", "verdict": NO_TARGET,
        })  # fmt: skip
        if "stages" in measured:
            stages = measured["stages"]["medians"]
            rows.append({
                "figure": "(f) astronaut: stage 1 / stage 2 seconds", "size": size,
                "value": f"{stages['stage1_seconds']:.2f} s / {stages['stage2_seconds']:.2f} s",
                "target": "none", "verdict": NO_TARGET,
            })  # fmt: skip
    return rows


def render_table(results: dict) -> str:
    rows = summary_rows(results)
    widths = [max(len(row[key]) for row in rows + [_TABLE_HEADER]) for key in _TABLE_KEYS]
    lines = []
    for row in [_TABLE_HEADER] + rows:
        lines.append("  ".join(row[key].ljust(width) for key, width in zip(_TABLE_KEYS, widths)).rstrip())
    return "\n".join(lines)


_TABLE_KEYS = ("figure", "size", "value", "target", "verdict")
_TABLE_HEADER = {"figure": "figure", "size": "size", "value": "value", "target": "target", "verdict": "verdict"}


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


def render_page(results: dict) -> str:
    parts = [_header(results), _summary(results)]
    for size, measured in results["sizes"].items():
        parts.append(f"## {size.capitalize()} size\n")
        loaded = measured["model"]
        parts.append(f"Unified folder: {format_bytes(measured['folder_bytes'])}. Loaded in the benchmark process: MXFP4 path "
                     f"`{loaded['mxfp4_path']}` ({loaded['mxfp4_reason']}); gpt-oss experts implementation chosen by "
                     f"transformers: `{loaded['experts_implementation']}`.\n")  # fmt: skip
        parts.append(_overhead_section(measured["overhead"], size))
        parts.append(_load_section(measured["load"]))
        parts.append(_batch_section(measured["batch"]))
        parts.append(_cache_section(measured["cache"]))
        parts.append(_build_section(measured["build"]))
        if "stages" in measured:
            parts.append(_stages_section(measured["stages"]))
    parts.append(GPU_SECTION)
    return "\n".join(parts).rstrip() + "\n"


GPU_SECTION = """## GPU check with full-size weights

`python bench/gpu_check.py` writes random weights at the full sizes of Qwen3-VL-4B (BF16) and
gpt-oss-20b (MXFP4 experts), builds a folder with `build_repo.py`, loads it with
`device_map="auto"`, and reports the MXFP4 path, GPU memory, tokens per second at batch 1 and 8,
time to the first answer token, and stage-2 decode speed against the memory-bandwidth limit. No GPU
has been available to this project yet, so it has no GPU figures here. Its code path runs on the
CPU at test-bed size in `tests/test_gpu_check.py` (`python -m pytest -m slow`).

The steps before the load need no GPU, and they have run at full size on a 2-core AMD EPYC machine
without one: `python bench/gpu_check.py --size full --prepare-only` wrote 8.88 GB of Qwen3-VL weights and
13.76 GB of gpt-oss weights in 106 s, `build_repo.py` hard-linked them into a folder in 28 s, and
`build_repo.py --verify` rehashed the folder in 19 s (2026-12-04).
"""


def _header(results: dict) -> str:
    machine = results["machine"]
    settings = results["settings"]
    gpus = ", ".join(f"{gpu['name']} ({format_bytes(gpu['memory_bytes'])})" for gpu in machine["gpus"]) or "none"
    load_start = " ".join(f"{value:.2f}" for value in machine["load_average"] or [])
    load_end = " ".join(f"{value:.2f}" for value in results.get("load_average_end") or [])
    quick = (
        "\nThis page comes from a `--quick` run (fewer repeats and tokens): it checks that the script works, "
        "and its figures are not for citing.\n" if results["mode"] == "quick" else ""
    )
    date = machine["date_utc"].replace("T", " ")[:16] + " UTC"
    return f"""# Benchmarks

Command: `{results['command']}`, run on {date}; it took {results['duration_s'] / 60:.1f} minutes.
{quick}
| machine | |
|---|---|
| CPU | {machine['cpu']}, {machine['cpu_count']} cores ({machine['cpus_usable']} usable) |
| torch threads | {machine['torch_threads']} |
| RAM | {format_bytes(machine['ram_bytes'])} |
| GPU | {gpus} |
| software | Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']} |
| load average (1, 5, 15 min) | at start {load_start}; at end {load_end} |

Method: the script writes the test-bed models (`tests/testbed.py`: the real architectures with
random weights, shrunk to the "tiny" and "medium" widths) and builds a unified folder from them.
Unless a section states otherwise, both stages generate exactly {settings['tokens']} tokens per
prompt (`min_new_tokens` equal to `max_new_tokens`), greedily. `answer_reserve_tokens` is 0, so
stage 2 is one `generate` call, with no second pass to open the final channel. Each comparison runs
its two variants in the same rounds, alternating which goes first unless the section states
otherwise. Times are medians over the timed rounds after {settings['warmups']} warm-up round(s),
and a ratio is the median of the per-round ratios.
Load and build run in child processes, one per run, which time only the load or the build.
"""


def _summary(results: dict) -> str:
    lines = ["## Summary\n", "| figure | size | value | target | verdict |", "|---|---|---|---|---|"]
    for row in summary_rows(results):
        lines.append(f"| {row['figure']} | {row['size']} | {row['value']} | {row['target']} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def _timing_table(comparison: dict, with_ratio: bool = True) -> str:
    lines = ["| variant | median | min | max | rounds |", "|---|---|---|---|---|"]
    for name in (comparison["a"], comparison["b"]):
        timing = comparison[name]
        lines.append(f"| {name} | {_s(timing['median_s'])} | {_s(timing['min_s'])} | {_s(timing['max_s'])} "
                     f"| {len(timing['samples_s'])} |")  # fmt: skip
    if with_ratio:
        lines.append(f"\nRatio {comparison['a']} / {comparison['b']}: median {comparison['ratio_median']:.3f}x "
                     f"(per-round range {comparison['ratio_min']:.3f}x to {comparison['ratio_max']:.3f}x).")  # fmt: skip
    return "\n".join(lines) + "\n"


def _top_table(rows: list[dict]) -> str:
    lines = ["| function | calls | own time |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row['function']}` | {row['calls']} | {_s(row['seconds'])} |")
    return "\n".join(lines) + "\n"


def _profile_table(profile: dict, product: str, baseline: str) -> str:
    lines = [
        f"Under cProfile ({profile['runs']} run(s) of each, alternating; each function's own time is its minimum "
        f"over the runs), {product} took {_s(profile['product_seconds'])} and {baseline} "
        f"{_s(profile['baseline_seconds'])}. The functions whose own time grew most:\n",
        f"| function | calls {product} / {baseline} | own time {product} | own time {baseline} | extra |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for row in profile["rows"]:
        lines.append(f"| `{row['function']}` | {row['calls']} / {row['baseline_calls']} | {_s(row['seconds'])} "
                     f"| {_s(row['baseline_seconds'])} | {_s(row['extra_seconds'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _overhead_section(overhead: dict, size: str) -> str:
    comparison = overhead["comparison"]
    ratio = comparison["ratio_median"]
    state = verdict(ratio, OVERHEAD_TARGET, True) if size == "medium" else NO_TARGET
    same = "the same" if overhead["same_description"] and overhead["same_reply"] else "DIFFERENT"
    text = [
        "### (a) `model.generate` against the two stages called directly\n",
        f"One question about the astronaut photo, {overhead['tokens']} tokens per stage. On the last round both "
        f"sides produced {same} description and stage-2 token ids (generate: {overhead['product_tokens'][0]} + "
        f"{overhead['product_tokens'][1]} tokens; direct: {overhead['direct_tokens'][0]} + "
        f"{overhead['direct_tokens'][1]}).\n",
        _timing_table(comparison),
        f"Target: <= {OVERHEAD_TARGET}x at medium size. Verdict: **{state}**.\n",
    ]
    if ratio > OVERHEAD_TARGET:
        text.append("Where the extra time goes:\n")
        text.append(_profile_table(overhead["profile"], "generate", "direct"))
    return "\n".join(text)


def _load_section(load: dict) -> str:
    comparison = load["comparison"]
    ratios = load_rss_ratios(load)
    unified, direct = load["unified"], load["direct"]
    time_state = verdict(comparison["ratio_median"], LOAD_TIME_TARGET, True)
    rss_state = verdict(ratios["unified"]["above_baseline"], LOAD_RSS_TARGET, True)
    baseline = load["baseline_rss_bytes"]

    peak_kind = ("the peak of the load alone (the peak-RSS mark, VmHWM, reset after the imports)"
                 if unified["peak_was_reset"] and direct["peak_was_reset"]
                 else "the peak of the whole process (the peak-RSS mark could not be reset)")  # fmt: skip
    text = [
        "### (b) `from_pretrained` of the folder against loading both sub-models directly\n",
        "Direct: `AutoModelForImageTextToText.from_pretrained(folder/vlm)` and `AutoModelForCausalLM."
        "from_pretrained(folder/llm, quantization_config=Mxfp4Config(dequantize=True))`, both with `dtype=\"auto\"`.\n",
        _timing_table(comparison),
        f"Target for time: <= {LOAD_TIME_TARGET}x. Verdict: **{time_state}**.\n",
        "| memory | unified | direct |",
        "|---|---|---|",
        _pair_row("loaded tensors (parameters and buffers)", load, lambda part: format_bytes(part["weight_bytes"])),
        _pair_row("peak RSS during the load (median)", load, lambda part: format_bytes(part["load_peak_rss_bytes"])),
        f"| peak RSS / tensors, raw | {ratios['unified']['raw']:.3f}x | {ratios['direct']['raw']:.3f}x |",
        f"| (peak RSS - baseline) / tensors | {ratios['unified']['above_baseline']:.3f}x "
        f"| {ratios['direct']['above_baseline']:.3f}x |",
        _pair_row("RSS before the load: anonymous, file-backed", load, lambda part: _rss_pair(part["rss_before_load"])),
        _pair_row("RSS after the load: anonymous, file-backed", load, lambda part: _rss_pair(part["rss_after_load"])),
        _pair_row("process peak RSS, imports included", load,
                  lambda part: format_bytes(part["process_peak_rss_bytes"])),
        "",
        f"Peak RSS here is {peak_kind}. Baseline: a child that imports torch, transformers and the model code "
        f"and loads nothing holds {format_bytes(baseline)} resident after its imports (its import peak: "
        f"{format_bytes(load['baseline_process_peak_rss_bytes'])}). Target for memory: peak RSS above that "
        f"baseline <= {LOAD_RSS_TARGET}x the loaded tensors. Verdict: **{rss_state}**.\n",
    ]  # fmt: skip

    grown = sum(unified["rss_after_load"].get(key, 0) - unified["rss_before_load"].get(key, 0)
                for key in ("RssAnon", "RssFile"))  # fmt: skip
    if grown < unified["weight_bytes"]:
        text.append(f"The load added {format_bytes(grown)} of resident pages (anonymous and file-backed) for "
                    f"{format_bytes(unified['weight_bytes'])} of tensors, so part of the tensors was not resident "
                    "when the load returned.\n")  # fmt: skip
    if ratios["unified"]["raw"] > LOAD_RSS_TARGET and rss_state == MET:
        text.append(f"The raw ratio exceeds {LOAD_RSS_TARGET}x because the import baseline alone is "
                    f"{baseline / unified['weight_bytes']:.2f}x the tensor bytes at this size.\n")  # fmt: skip
    if "profile" in load:
        text.append("Where the extra load time goes (both loads profiled in the benchmark process, where every "
                    "module they import was already loaded):\n")  # fmt: skip
        text.append(_profile_table(load["profile"], "unified", "direct"))
    return "\n".join(text)


def _batch_section(batch: dict) -> str:
    comparison = batch["comparison"]
    ratio = batch["throughput_ratio"]
    state = verdict(ratio, BATCH_TARGET, False)
    tokens = {tuple(pair) for pair in batch["tokens_per_prompt"]}
    text = [
        f"### (c) {batch['prompts']} prompts with images in one call against {batch['prompts']} calls\n",
        f"{batch['photos']} photos under {batch['prompts']} different questions, {batch['tokens']} tokens per stage and prompt "
        f"(tokens per prompt in the batch, stage 1 and stage 2: {sorted(tokens)}).\n",
        _timing_table(comparison, with_ratio=False),
        f"Throughput ratio (sequential time / batch time): median {ratio:.2f}x (per-round range "
        f"{batch['throughput_ratio_min']:.2f}x to {batch['throughput_ratio_max']:.2f}x). Target: >= {BATCH_TARGET}x "
        f"on CPU. Verdict: **{state}**.\n",
    ]  # fmt: skip

    breakdown = batch["breakdown"]
    rows = ["| part (last timed round, modules timed by forward hooks) | batch | sequential | speed-up |",
            "|---|---|---|---|"]  # fmt: skip
    parts = [("whole call", "seconds"), ("stage 1", "stage1_seconds"), ("stage 2", "stage2_seconds")]
    for label, key in parts:
        rows.append(_speedup_row(label, breakdown["batch"][key], breakdown["sequential"][key]))
    outside = {}
    for name, part in breakdown.items():
        outside[name] = part["seconds"] - part["stage1_seconds"] - part["stage2_seconds"]
    rows.append(_speedup_row("outside the two stage timers", outside["batch"], outside["sequential"]))
    for module in breakdown["batch"]["modules"]:
        rows.append(_speedup_row(f"{module} (forward calls: {breakdown['batch']['module_calls'][module]} / "
                                 f"{breakdown['sequential']['module_calls'][module]})",
                                 breakdown["batch"]["modules"][module], breakdown["sequential"]["modules"][module]))  # fmt: skip
    text.append("\n".join(rows) + "\n")

    if state == MISSED:
        batch_modules, sequential_modules = breakdown["batch"]["modules"], breakdown["sequential"]["modules"]
        speedups = {name: sequential_modules[name] / seconds for name, seconds in batch_modules.items() if seconds > 0}
        if speedups:
            slowest = min(speedups, key=speedups.get)
            share = batch_modules[slowest] / breakdown["batch"]["seconds"]
            text.append(f"Of the timed modules, the {slowest} gained least from batching ({speedups[slowest]:.2f}x) "
                        f"and took {share:.0%} of the batch call.")  # fmt: skip
        text.append(f"Outside the two stage timers the batch call spent {_s(outside['batch'])}, "
                    f"{outside['batch'] / breakdown['batch']['seconds']:.0%} of it.\n")  # fmt: skip
    if "batch_profile" in batch:
        text.append("The largest own times in one profiled batch call:\n")
        text.append(_top_table(batch["batch_profile"]))
    return "\n".join(text)


def _speedup_row(label: str, batch: float, sequential: float) -> str:
    speedup = f"{sequential / batch:.2f}x" if batch > 0 else "n/a"
    return f"| {label} | {_s(batch)} | {_s(sequential)} | {speedup} |"


def _cache_section(cache: dict) -> str:
    comparison = cache["comparison"]
    state = verdict(cache["ratio"], CACHE_TARGET, True)
    first, follow = cache["outputs"]["first"], cache["outputs"]["follow-up"]
    calls = {name: comparison[name]["samples_s"][-1] for name in ("first", "follow-up")}
    outside = {name: calls[name] - output["stage1_seconds"] - output["stage2_seconds"]
               for name, output in cache["outputs"].items()}  # fmt: skip
    text = [
        "### (d) A follow-up question about a cached image against the first question\n",
        f"`model.chat`: the first turn asks about the astronaut photo; the follow-up sends that turn, an "
        f"assistant reply and a new question, so its image's description comes from the cache. The cache is "
        f"cleared before each round, and the first question runs first in every round. {cache['tokens']} tokens "
        f"per stage.\n",
        _timing_table(comparison, with_ratio=False),
        f"Ratio follow-up / first: median {cache['ratio']:.3f}x (per-round range {cache['ratio_min']:.3f}x to "
        f"{cache['ratio_max']:.3f}x). Target: <= {CACHE_TARGET}x. Verdict: **{state}**.\n",
        "| last round | first | follow-up |",
        "|---|---|---|",
        f"| descriptions from the cache | {first['cached_descriptions']} | {follow['cached_descriptions']} |",
        f"| stage-1 tokens generated | {first['description_tokens']} | {follow['description_tokens']} |",
        f"| stage-1 seconds | {_s(first['stage1_seconds'])} | {_s(follow['stage1_seconds'])} |",
        f"| stage-2 prompt tokens | {first['prompt_tokens']} | {follow['prompt_tokens']} |",
        f"| stage-2 seconds | {_s(first['stage2_seconds'])} | {_s(follow['stage2_seconds'])} |",
        f"| whole call | {_s(calls['first'])} | {_s(calls['follow-up'])} |",
        f"| outside the two stage timers | {_s(outside['first'])} | {_s(outside['follow-up'])} |",
        "",
    ]  # fmt: skip
    if state == MISSED:
        text.append(f"The follow-up spent {_s(follow['stage2_seconds'])} in stage 2 against "
                    f"{_s(first['stage2_seconds'])} for the first question, with a stage-2 prompt of "
                    f"{follow['prompt_tokens']} tokens against {first['prompt_tokens']}, and "
                    f"{_s(outside['follow-up'])} outside the stage timers.\n")  # fmt: skip
    if "follow_up_profile" in cache:
        text.append("The largest own times in one profiled follow-up call:\n")
        text.append(_top_table(cache["follow_up_profile"]))
    return "\n".join(text)


def _build_section(build: dict) -> str:
    hardlink, copy = build["hardlink"], build["copy"]
    rows = ["| bytes (median) | hardlink | copy |", "|---|---|---|"]
    for label, key in (("written through write calls (`write_chars`)", "write_chars"),
                       ("sent to the storage layer (`write_bytes`)", "write_bytes"),
                       ("files in the output folder", "folder_bytes"),
                       ("of which not shared with the sources (link count 1)", "unshared_bytes")):  # fmt: skip
        rows.append(f"| {label} | {format_bytes(hardlink[key])} | {format_bytes(copy[key])} |")
    return "\n".join([
        "### (e) `build_repo.py --link hardlink` against `--link copy`\n",
        "Each run builds a fresh folder from the test-bed sources in a child process, whose I/O counters "
        "(`write_chars`, `write_bytes` of /proc/self/io, read through psutil) give the bytes written.\n",
        _timing_table(build["comparison"]),
        "\n".join(rows),
        "\nNo target is set for this figure.\n",
    ])  # fmt: skip


def _stages_section(stages: dict) -> str:
    medians = stages["medians"]
    rate1 = medians["description_tokens"] / medians["stage1_seconds"]
    rate2 = medians["generated_tokens"] / medians["stage2_seconds"]
    grid = " x ".join(str(value) for value in stages["patch_grid"])
    width, height = stages["image_size"]
    scaled = "is not downscaled" if width * height <= stages["pixel_budget"] else "is downscaled to fit it"
    return "\n".join([
        "### (f) Tokens and time per stage for the astronaut photo\n",
        f"Default pixel budget ({stages['pixel_budget']} pixels), so the {width} x {height} photo {scaled}. "
        f"Medians of {stages['runs']} run(s) after one warm-up, {stages['tokens']} tokens per stage.\n",
        "| quantity | value |",
        "|---|---|",
        f"| patch grid (t x h x w) | {grid} |",
        f"| visual tokens (grid / merge size^2) | {stages['visual_tokens']} |",
        f"| stage-1 prompt tokens (text and visual) | {stages['stage1_prompt_tokens']} |",
        f"| stage-1 tokens generated | {medians['description_tokens']:.0f} |",
        f"| stage-1 seconds (of which vision encoder) | {_s(medians['stage1_seconds'])} ({_s(medians['vision_encoder_seconds'])}) |",
        f"| stage-1 tokens per second, prompt processing included | {rate1:.1f} |",
        f"| stage-2 prompt tokens | {medians['prompt_tokens']:.0f} |",
        f"| stage-2 tokens generated | {medians['generated_tokens']:.0f} |",
        f"| stage-2 seconds | {_s(medians['stage2_seconds'])} |",
        f"| stage-2 tokens per second, prompt processing included | {rate2:.1f} |",
        "\nNo target is set for this figure.\n",
    ])  # fmt: skip


def _pair_row(label: str, load: dict, cell) -> str:
    return f"| {label} | {cell(load['unified'])} | {cell(load['direct'])} |"


def _rss_pair(parts: dict) -> str:
    return f"{format_bytes(parts.get('RssAnon'))}, {format_bytes(parts.get('RssFile'))}"


def _s(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"
