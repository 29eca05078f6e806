#!/usr/bin/env python
"""Build a unified model folder, load it with AutoModel, and ask a question about a photo.

    python demo.py                                    # offline: random-weight test-bed models
    python demo.py --model /tmp/my-unified-model      # a folder built by build_repo.py
    python demo.py --vlm Qwen/Qwen3-VL-4B-Instruct --llm openai/gpt-oss-20b   # build from the Hub first

Without arguments nothing is downloaded: the demo writes tiny Qwen3-VL and gpt-oss checkpoints
shaped like the real ones (random weights), packages them with build_repo.py, and asks about
scikit-image's astronaut photo. The answer is therefore noise; the point is that every step of
the real pipeline runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

import build_repo  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ask a question about an image with the unified model.")
    parser.add_argument("--model", type=Path, help="a folder built by build_repo.py (skips building)")
    parser.add_argument("--vlm", help="Qwen3-VL source (Hub id or folder) to build from")
    parser.add_argument("--llm", help="gpt-oss source (Hub id or folder) to build from")
    parser.add_argument("--output", type=Path, help="where to build (default: a temporary folder)")
    parser.add_argument("--image", help="image path or URL (default: scikit-image's astronaut photo)")
    parser.add_argument("--question", default="What is the main subject of this image?", help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="stage-2 token budget")
    parser.add_argument("--device-map", default=None, help='device_map for from_pretrained, e.g. "auto"')
    return parser.parse_args(argv)


def build_folder(args: argparse.Namespace, workspace: Path) -> tuple[Path, bool]:
    """Return the model folder to load and whether it contains the random test-bed weights."""
    if args.model is not None:
        return args.model, False
    output = args.output or workspace / "unified-model"
    if args.vlm or args.llm:
        vlm = build_repo.resolve_source("vlm", args.vlm or build_repo.DEFAULT_VLM, None, None)
        llm = build_repo.resolve_source("llm", args.llm or build_repo.DEFAULT_LLM, None, None)
        return build_repo.build(vlm, llm, output, force=args.output is not None), False

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import testbed

    print("Writing the offline test-bed sources (tiny models, random weights)...", flush=True)
    sources = testbed.build_sources(workspace / "sources")
    vlm = build_repo.resolve_source("vlm", str(sources.qwen3_vl), None, None)
    llm = build_repo.resolve_source("llm", str(sources.gpt_oss), None, None)
    return build_repo.build(vlm, llm, output, force=args.output is not None), True


def default_image(workspace: Path) -> str:
    import skimage.data
    from PIL import Image

    path = workspace / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"error: --model {args.model} is not a model folder (no config.json); build one with build_repo.py.",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        return run(args)
    except (build_repo.BuildError, ValueError, TypeError, OSError) as error:
        # Bad input (a missing image, an invalid folder) ends with its message instead of a traceback.
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="unified-demo-") as temporary:
        workspace = Path(temporary)
        started = time.perf_counter()
        folder, random_weights = build_folder(args, workspace)
        print(f"Model folder: {folder} ({time.perf_counter() - started:.1f} s)", flush=True)

        import torch
        from transformers import AutoModel

        started = time.perf_counter()
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16,
                                          device_map=args.device_map)  # fmt: skip
        print(f"Loaded {type(model).__name__} in {time.perf_counter() - started:.1f} s; "
              f"MXFP4 path: {model.mxfp4_path} ({model.mxfp4_reason})", flush=True)  # fmt: skip

        image = args.image or default_image(workspace)
        budget = args.max_new_tokens or (64 if random_weights else 1024)
        description_budget = 48 if random_weights else None
        result = model.generate(images=image, text_prompt=args.question, max_new_tokens=budget,
                                description_max_new_tokens=description_budget, return_dict=True)  # fmt: skip

    print(f"\nQuestion: {args.question}")
    print(f"Image: {args.image or 'scikit-image astronaut photo'}")
    print(f"Answer: {result.answer}")
    print(f"\nStage 1 (vision model): {result.description_tokens} tokens in {result.stage1_seconds:.2f} s")
    # Channel headers and text outside any channel (frequent with random weights) make up the rest.
    other = result.generated_tokens - result.reasoning_tokens - result.answer_tokens
    print(f"Stage 2 (gpt-oss): {result.prompt_tokens} prompt tokens, {result.generated_tokens} generated "
          f"({result.reasoning_tokens} reasoning, {result.answer_tokens} answer, {other} headers and other) in "
          f"{result.stage2_seconds:.2f} s; stop: {result.stop_reason}"
          f"{', final channel forced' if result.forced_final else ''}")  # fmt: skip
    if random_weights:
        print("\nNote: the demo models have random weights, so the answer is not meaningful. Build with "
              "`python build_repo.py` and run `python demo.py --model /tmp/my-unified-model` for real answers.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
