"""Measurements that need a fresh process: one load or one build per run, reported as JSON.

    python bench/child.py load unified|direct|none FOLDER
    python bench/child.py build hardlink|copy VLM_SOURCE LLM_SOURCE OUTPUT

Every variant imports the same modules before its clock starts, so that their peak RSS differ only
by what the load itself adds. Linux only: memory figures come from /proc/self. The last line of stdout is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(REPO_ROOT))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where Linux does not allow it.

    Importing torch and transformers peaks above the RSS it settles at, so without a reset the
    process peak would hide a load that stays below that import peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_parts() -> dict[str, int]:
    """Resident memory from /proc/self/status: current (VmRSS), peak (VmHWM), anonymous and file-backed pages."""
    parts = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            parts[key] = int(value.split()[0]) * 1024
    return parts


def weight_bytes(*models) -> int:
    """Bytes of the parameters and buffers of `models`; tied weights, which share memory, count once."""
    seen, total = set(), 0
    for model in models:
        for tensor in list(model.parameters()) + list(model.buffers()):
            key = (tensor.device, tensor.data_ptr())
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def load_variant(variant: str, folder: Path) -> list:
    """Load `folder` as `variant` and return the loaded sub-models (none for "none").

    "unified" is the product's from_pretrained. "direct" loads the same two sub-folders with
    transformers alone, dequantizing gpt-oss's MXFP4 experts as the product does on a CPU.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, Mxfp4Config

    import modeling_unified

    if variant == "unified":
        model = modeling_unified.UnifiedMultimodalModel.from_pretrained(folder)
        return [model.vlm, model.llm]
    if variant == "direct":
        vlm = AutoModelForImageTextToText.from_pretrained(folder / "vlm", dtype="auto")
        llm = AutoModelForCausalLM.from_pretrained(folder / "llm", dtype="auto",
                                                   quantization_config=Mxfp4Config(dequantize=True))  # fmt: skip
        return [vlm, llm]
    if variant == "none":
        return []
    raise ValueError(f"unknown load variant {variant!r}; expected unified, direct or none")


def run_load(variant: str, folder: Path) -> dict:
    """Load `folder` as `variant` and report time, memory and tensor bytes.

    Peaks come from VmHWM, not from getrusage's ru_maxrss: a child's ru_maxrss starts from its
    parent's RSS at fork, so a large parent would inflate every child's figure.
    """
    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, Mxfp4Config  # noqa: F401

    import modeling_unified  # noqa: F401

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    after_import = rss_parts()

    peak_was_reset = reset_peak_rss()
    before_load = rss_parts()
    started = time.perf_counter()
    models = load_variant(variant, folder)
    seconds = time.perf_counter() - started
    after_load = rss_parts()
    return {
        "variant": variant,
        "seconds": seconds,
        # With the mark reset this is the peak of the load alone; else it includes the import peak.
        "load_peak_rss_bytes": after_load["VmHWM"],
        "peak_was_reset": peak_was_reset,
        "process_peak_rss_bytes": max(after_import["VmHWM"], after_load["VmHWM"]),
        "before_load": before_load,
        "after_load": after_load,
        "after_import": after_import,
        "weight_bytes": weight_bytes(*models),
    }


def io_counters() -> dict[str, int]:
    """Bytes this process wrote: `write_chars` through write calls, `write_bytes` sent to the storage layer."""
    try:
        import psutil

        counters = psutil.Process().io_counters()
        return {"write_chars": counters.write_chars, "write_bytes": counters.write_bytes}
    except (ImportError, AttributeError):
        values = {}
        for line in Path("/proc/self/io").read_text().splitlines():
            key, _, value = line.partition(":")
            values[key] = int(value)
        return {"write_chars": values["wchar"], "write_bytes": values["write_bytes"]}


def run_build(link: str, vlm_source: Path, llm_source: Path, output: Path) -> dict:
    import build_repo

    vlm = build_repo.resolve_source("vlm", str(vlm_source), None, None)
    llm = build_repo.resolve_source("llm", str(llm_source), None, None)
    before = io_counters()
    started = time.perf_counter()
    build_repo.build(vlm, llm, output, link=link)
    seconds = time.perf_counter() - started
    after = io_counters()

    total = unshared = 0
    for path in output.rglob("*"):
        if path.is_file():
            stat = path.stat()
            total += stat.st_size
            # A file with one link exists only here; a hard link shares its blocks with the source.
            if stat.st_nlink == 1:
                unshared += stat.st_size
    return {
        "link": link,
        "seconds": seconds,
        "write_chars": after["write_chars"] - before["write_chars"],
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "folder_bytes": total,
        "unshared_bytes": unshared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One load or build, measured in this process.")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="load a unified folder and report time and peak RSS")
    load.add_argument("variant", choices=("unified", "direct", "none"))
    load.add_argument("folder", type=Path)
    build = commands.add_parser("build", help="run build_repo.build and report time and bytes written")
    build.add_argument("link", choices=("hardlink", "copy"))
    build.add_argument("vlm", type=Path)
    build.add_argument("llm", type=Path)
    build.add_argument("output", type=Path)
    args = parser.parse_args(argv)

    if args.command == "load":
        result = run_load(args.variant, args.folder)
    else:
        result = run_build(args.link, args.vlm, args.llm, args.output)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
