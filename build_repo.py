#!/usr/bin/env python
"""Package Qwen3-VL and gpt-oss into one folder that loads with AutoModel and trust_remote_code.

    python build_repo.py                                  # Hub sources, output /tmp/my-unified-model
    python build_repo.py --vlm ./qwen --llm ./gpt-oss --output ./unified --link copy
    python build_repo.py --verify ./unified               # re-hash against manifest.json

Weight files are hard-linked or copied byte for byte and never re-saved, so gpt-oss keeps its
native MXFP4 experts (~13.8 GB instead of ~48 GB in BF16). The folder is built beside the output
under a temporary name and renamed into place at the end. An interrupted build therefore leaves
no folder that looks complete, and a rerun reuses the files already in place.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import unified_folder as layout

DEFAULT_VLM = "Qwen/Qwen3-VL-4B-Instruct"
DEFAULT_LLM = "openai/gpt-oss-20b"
DEFAULT_OUTPUT = "/tmp/my-unified-model"

# Files each part needs; weight shards are added from the index, never guessed from a pattern.
VLM_MODEL_FILES = ("config.json", "generation_config.json", layout.INDEX_NAME)
LLM_MODEL_FILES = ("config.json", "generation_config.json", layout.INDEX_NAME)
VLM_PROCESSOR_FILES = (
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json", "chat_template.json",
    "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json",
)  # fmt: skip
LLM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
REQUIRED = {
    "vlm": ("config.json", "preprocessor_config.json", "tokenizer_config.json"),
    "llm": ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"),
}


class BuildError(Exception):
    """A build cannot go on; the message names the file or setting and the fix."""


@dataclass
class Source:
    """A resolved source: the local folder and where it came from."""

    role: str
    spec: str
    folder: Path
    revision: str | None
    commit: str | None


def _logger():
    from transformers.utils import logging

    return logging.get_logger("build_repo")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def resolve_source(role: str, spec: str, revision: str | None, token: str | None) -> Source:
    """Return a local folder as it is, or download a Hub repo with only the files the package needs."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return Source(role, spec, path.resolve(), revision, _local_commit(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise BuildError(f"--{role} {spec}: not a folder. Pass a local model folder or a Hub repo id.")

    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    small = VLM_MODEL_FILES + VLM_PROCESSOR_FILES if role == "vlm" else LLM_MODEL_FILES + LLM_TOKENIZER_FILES
    try:
        # First the configs and the index (a few MB), pinned to one commit; then exactly the shards the index names.
        folder = layout.hub_snapshot(spec, revision=revision, token=token, allow_patterns=list(small))
        commit = folder.name
        shards = layout.shard_names(folder)
        folder = layout.hub_snapshot(spec, revision=commit, token=token, allow_patterns=list(small) + shards)
    except LocalEntryNotFoundError as error:
        raise BuildError(
            f"--{role} {spec}: no cached copy was found and the Hub cannot be reached ({error}). Connect to the "
            "network, or unset HF_HUB_OFFLINE, or pass a local folder."
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise BuildError(f"--{role} {spec}: {error}. Check the repo id, --{role}-revision and HF_TOKEN.") from error
    except OSError as error:
        if layout.is_disk_full(error):
            raise BuildError(f"--{role} {spec}: the disk is full while downloading into the Hugging Face cache "
                             f"(HF_HOME): {error}. Free space and rerun.") from error  # fmt: skip
        raise BuildError(
            f"--{role} {spec}: download failed: {error}. Rerun the same command to resume; completed files stay in "
            "the Hugging Face cache (HF_HOME)."
        ) from error
    except Exception as error:  # network errors of the HTTP client surface under several types
        if type(error).__module__.split(".")[0] in ("httpx", "requests", "urllib3", "huggingface_hub", "hf_xet"):
            raise BuildError(
                f"--{role} {spec}: download failed: {error}. Rerun the same command to resume; completed files stay "
                "in the Hugging Face cache (HF_HOME)."
            ) from error
        raise
    return Source(role, spec, folder, revision, commit)


def _local_commit(folder: Path) -> str | None:
    """Return the commit of a Hugging Face cache snapshot folder (snapshots/<commit>), else None."""
    if folder.parent.name == "snapshots" and len(folder.name) == 40:
        return folder.name
    return None


def validate_source(source: Source) -> dict:
    """Check a source before anything is copied; return its config."""
    folder = source.folder
    if not (folder / "config.json").is_file():
        raise BuildError(f"--{source.role} {source.spec}: {folder / 'config.json'} is missing.")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise BuildError(f"{folder / 'config.json'} is not valid JSON: {error}.") from error
    # The model type is checked first, so that swapped --vlm and --llm folders are named as such.
    expected = {"vlm": "qwen3_vl", "llm": "gpt_oss"}[source.role]
    if config.get("model_type") != expected:
        raise BuildError(
            f"--{source.role} {source.spec}: {folder / 'config.json'} has model_type {config.get('model_type')!r}, "
            f"expected {expected!r}. Check that --vlm and --llm are not swapped."
        )
    for name in REQUIRED[source.role]:
        if not (folder / name).is_file():
            raise BuildError(f"--{source.role} {source.spec}: {folder / name} is missing.")
    if source.role == "llm":
        quantization = config.get("quantization_config") or {}
        if quantization.get("quant_method") != "mxfp4":
            raise BuildError(
                f"--llm {source.spec}: {folder / 'config.json'} has no MXFP4 quantization_config (found "
                f"{quantization or 'none'}); use the original openai/gpt-oss-20b checkpoint."
            )
    try:
        layout.check_shards(folder)
    except layout.FolderError as error:
        raise BuildError(f"--{source.role} {source.spec}: {error}") from error
    return config


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def plan_files(vlm: Source, llm: Source) -> list[tuple[Path, str]]:
    """(source file, path in the output) for every file taken from the sources."""
    plan = []
    for source, subfolder, names in (
        (vlm, layout.VLM_SUBFOLDER, VLM_MODEL_FILES),
        (llm, layout.LLM_SUBFOLDER, LLM_MODEL_FILES),
        (vlm, layout.VLM_PROCESSOR_SUBFOLDER, VLM_PROCESSOR_FILES),
        (llm, layout.LLM_TOKENIZER_SUBFOLDER, LLM_TOKENIZER_FILES),
    ):
        for name in names:
            if (source.folder / name).is_file():
                plan.append((source.folder / name, f"{subfolder}/{name}"))
        if subfolder in (layout.VLM_SUBFOLDER, layout.LLM_SUBFOLDER):
            for shard in layout.shard_names(source.folder):
                plan.append((source.folder / shard, f"{subfolder}/{shard}"))
    return plan


def build(
    vlm: Source, llm: Source, output: Path, *, link: str = "auto", force: bool = False, code_dir: Path | None = None
) -> Path:
    """Build the folder at `output` and return it."""
    log = _logger()
    code_dir = code_dir or layout.CODE_DIR
    output = output.expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise BuildError(f"--output {output} is a file; pass a folder path.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise BuildError(f"--output {output} is not empty. Pass --force to replace it, or choose another folder.")
    for source in (vlm, llm):
        if output == source.folder or output in source.folder.parents:
            raise BuildError(f"--output {output} contains the {source.role} source; choose another folder.")

    vlm_config = validate_source(vlm)
    llm_config = validate_source(llm)
    plan = plan_files(vlm, llm)
    _check_free_space(plan, output.parent, link)

    staging = output.parent / f".{output.name}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        hashes = _place_files(plan, staging, link)
        _write_package_files(staging, vlm, llm, vlm_config, llm_config, code_dir)
        sources = {source.role: {"repo": source.spec, "revision": source.revision, "commit": source.commit}
                   for source in (vlm, llm)}  # fmt: skip
        layout.write_manifest(staging, sources, hashes, extra={"built": _build_stamp()})
        _publish(staging, output)
    except OSError as error:
        if layout.is_disk_full(error):
            shutil.rmtree(staging, ignore_errors=True)
            raise BuildError(
                f"The disk holding {output.parent} is full ({error}); the partial build was removed. Free space, or "
                "use --link hardlink to avoid copies, and rerun."
            ) from error
        raise
    log.info(f"Built {output}")
    return output


def _place_files(plan: list[tuple[Path, str]], staging: Path, link: str) -> dict[str, str]:
    """Link or copy each file, then hash the placed file and compare it with the source's hash.

    A copy hashes the source while reading it, so each copied byte is read twice in all: once to
    copy it and once to check the copy. A hard link shares the source's bytes and is hashed once.
    """
    from huggingface_hub.utils import tqdm

    total = sum(source.stat().st_size for source, _ in plan)
    wanted = {relative for _, relative in plan}
    for leftover in layout.list_files(staging):
        # Files of an earlier, interrupted build from other sources; package files are rewritten later.
        if "/" in leftover and leftover not in wanted:
            (staging / leftover).unlink()
    hashes = {}
    description = "Copying and hashing" if link == "copy" else "Linking (or copying) and hashing"
    with tqdm(total=total * 2, unit="B", unit_scale=True, desc=description) as bar:
        for source, relative in plan:
            target = staging / relative
            size = source.stat().st_size
            if target.is_file() and target.stat().st_size == size:
                # Left by an interrupted build: kept when its bytes equal the source's.
                expected = layout.sha256_file(source)
                if layout.sha256_file(target) == expected:
                    hashes[relative] = expected
                    bar.update(2 * size)
                    continue
            _, source_digest = layout.place_file(source, target, link, bar.update)
            placed = layout.sha256_file(target, bar.update)
            if source_digest is not None and placed != source_digest:
                raise BuildError(f"{target} differs from {source} after copying (sha256 {placed} != {source_digest}).")
            hashes[relative] = placed
    return hashes


def _check_free_space(plan: list[tuple[Path, str]], parent: Path, link: str) -> None:
    parent.mkdir(parents=True, exist_ok=True)
    needed = sum(source.stat().st_size for source, _ in plan)
    if link != "copy" and all(_same_device(source, parent) for source, _ in plan):
        return
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise BuildError(
            f"The build needs {needed / 1e9:.1f} GB in {parent} but only {free / 1e9:.1f} GB are free. Free space, "
            "choose another --output, or put the output on the file system of the Hugging Face cache and use "
            "--link hardlink."
        )


def _same_device(source: Path, folder: Path) -> bool:
    return os.stat(os.path.realpath(source)).st_dev == os.stat(folder).st_dev


def _write_package_files(staging: Path, vlm: Source, llm: Source, vlm_config: dict, llm_config: dict, code_dir: Path):
    for name in (*layout.CODE_FILES, layout.BUILD_SCRIPT):
        if not (code_dir / name).is_file():
            raise BuildError(f"{code_dir / name} is missing; run build_repo.py from a complete checkout.")
        shutil.copyfile(code_dir / name, staging / name)

    sys.path.insert(0, str(code_dir))
    try:
        from configuration_unified import UnifiedConfig
    finally:
        sys.path.remove(str(code_dir))
    config = UnifiedConfig(vlm_config=vlm_config, llm_config=llm_config)
    config.architectures = ["UnifiedMultimodalModel"]
    config.auto_map = {
        "AutoConfig": "configuration_unified.UnifiedConfig",
        "AutoModel": "modeling_unified.UnifiedMultimodalModel",
    }
    config.save_pretrained(staging)
    (staging / "README.md").write_text(render_model_card(vlm, llm, staging))


def _publish(staging: Path, output: Path) -> None:
    """Move the finished folder into place; an existing output (with --force) is replaced only now."""
    if output.exists():
        trash = output.parent / f".{output.name}.old"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(output, trash)
        os.replace(staging, output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, output)


def _build_stamp() -> dict:
    import huggingface_hub
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
    }


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------

MODEL_CARD = """\
---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
base_model:
- {vlm_repo}
- {llm_repo}
tags:
- multimodal
- vision-language
- gpt-oss
- qwen3-vl
- mxfp4
- custom_code
---

# Qwen3-VL + gpt-oss: ask questions about images

One model folder, one `generate()`. Stage 1: {vlm_repo} (BF16) looks at each image and writes
structured text (overview, objects with counts and positions, visible text verbatim, layout, and
what the question needs). Stage 2: {llm_repo} (native MXFP4) reasons over that text and your
question; only its final answer is returned. No weights were trained or added.

## Usage

```python
import torch
from PIL import Image
from transformers import AutoModel

model = AutoModel.from_pretrained("path/or/repo-id", trust_remote_code=True,
                                  dtype=torch.bfloat16, device_map="auto")
answer = model.generate(images=Image.open("photo.jpg"),
                        text_prompt="What is the main subject of this image?",
                        max_new_tokens=1024)
print(answer)
```

`return_dict=True` returns the descriptions, the reasoning, token counts and timings as well.
`model.chat(messages)` takes OpenAI-style messages with image parts and caches descriptions, so
follow-up questions about the same image skip the vision model.

## Memory

| part | format | size on disk |
|---|---|---|
| vlm/ | {vlm_dtype} | {vlm_gb:.1f} GB |
| llm/ | MXFP4 experts, BF16 rest | {llm_gb:.1f} GB |

On a CUDA GPU of compute capability 7.5 or newer, with `triton>=3.4` and the `kernels` package,
gpt-oss runs its experts in MXFP4 and the whole model needs about {total_gb:.0f} GB of GPU memory
plus activations. Elsewhere (CPU, older GPUs, missing kernels) the experts are dequantized to BF16
at load, which adds about {extra_gb:.0f} GB; the model logs one warning saying why, and
`model.mxfp4_path` tells which path was taken.

## How it was built

Built by `build_repo.py` (included) on {date} with transformers {transformers_version}:

| part | source | commit |
|---|---|---|
| vlm/, vlm_processor/ | {vlm_source} | {vlm_commit} |
| llm/, llm_tokenizer/ | {llm_source} | {llm_commit} |

Weight files are byte-identical to the sources; `manifest.json` lists the size and SHA-256 of
every file, and `python build_repo.py --verify FOLDER` checks a copy against it. Both source
models are released under the Apache-2.0 license.
"""


def render_model_card(vlm: Source, llm: Source, staging: Path) -> str:
    import transformers

    def size(subfolder: str) -> float:
        return sum(p.stat().st_size for p in (staging / subfolder).glob("*.safetensors")) / 1e9

    from unified_loading import expert_sizes

    vlm_gb, llm_gb = size(layout.VLM_SUBFOLDER), size(layout.LLM_SUBFOLDER)
    stored, dequantized = expert_sizes(staging / layout.LLM_SUBFOLDER)
    return MODEL_CARD.format(
        vlm_repo=hub_repo_id(vlm, DEFAULT_VLM),
        llm_repo=hub_repo_id(llm, DEFAULT_LLM),
        vlm_dtype="BF16",
        vlm_gb=vlm_gb,
        llm_gb=llm_gb,
        total_gb=vlm_gb + llm_gb,
        extra_gb=(dequantized - stored) / 1e9,
        date=datetime.date.today().isoformat(),
        transformers_version=transformers.__version__,
        vlm_source=vlm.spec,
        llm_source=llm.spec,
        vlm_commit=vlm.commit or "local folder",
        llm_commit=llm.commit or "local folder",
    )


def hub_repo_id(source: Source, default: str) -> str:
    """Return the Hub id of a source: as given, read from a Hugging Face cache path, or the default model's."""
    if source.folder.parent.name == "snapshots" and source.folder.parent.parent.name.startswith("models--"):
        return source.folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    if not Path(source.spec).expanduser().exists():
        return source.spec
    return default


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def push_folder(folder: Path, repo_id: str, token: str | None, private: bool) -> str:
    """Upload a built folder to the Hub; large files go through huggingface_hub's resumable upload."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                               commit_message="Upload unified Qwen3-VL + gpt-oss model")  # fmt: skip
    return str(getattr(commit, "commit_url", commit))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Package Qwen3-VL (BF16) and gpt-oss (MXFP4) into one Hub-ready model folder."
    )
    parser.add_argument("--vlm", default=DEFAULT_VLM, help=f"Hub repo id or local folder of Qwen3-VL (default {DEFAULT_VLM})")
    parser.add_argument("--llm", default=DEFAULT_LLM, help=f"Hub repo id or local folder of gpt-oss (default {DEFAULT_LLM})")
    parser.add_argument("--vlm-revision", default=None, help="branch, tag or commit of --vlm on the Hub")
    parser.add_argument("--llm-revision", default=None, help="branch, tag or commit of --llm on the Hub")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"folder to build (default {DEFAULT_OUTPUT})")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument(
        "--link",
        choices=("auto", "hardlink", "copy"),
        default="auto",
        help="how weight files are placed: hard links where possible (auto), hard links only, or copies",
    )
    parser.add_argument("--verify", metavar="FOLDER", help="re-hash FOLDER against its manifest.json and exit")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the built folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    parser.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the saved login)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import logging as std_logging

    from transformers.utils import logging

    args = parse_args(argv)
    log = _logger()
    if not log.handlers:
        handler = std_logging.StreamHandler()
        handler.setFormatter(std_logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    try:
        if args.verify:
            problems = layout.verify_folder(Path(args.verify))
            for problem in problems:
                log.error(problem)
            log.info(f"{args.verify}: {'OK' if not problems else f'{len(problems)} mismatch(es)'}")
            return 1 if problems else 0
        vlm = resolve_source("vlm", args.vlm, args.vlm_revision, args.token)
        llm = resolve_source("llm", args.llm, args.llm_revision, args.token)
        output = build(vlm, llm, Path(args.output), link=args.link, force=args.force)
        if args.push_to_hub:
            log.info(f"Uploaded: {push_folder(output, args.push_to_hub, args.token, args.private)}")
    except (BuildError, layout.FolderError) as error:
        log.error(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
