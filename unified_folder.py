"""Layout of a packaged model folder, its manifest, and checks of safetensors shards.

Shared by build_repo.py (which writes folders) and modeling_unified.py (which loads and saves them).
The module imports only the standard library (hub_snapshot imports huggingface_hub when called),
so importing it is cheap and has no side effects.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

VLM_SUBFOLDER = "vlm"
LLM_SUBFOLDER = "llm"
VLM_PROCESSOR_SUBFOLDER = "vlm_processor"
LLM_TOKENIZER_SUBFOLDER = "llm_tokenizer"
# Files without which AutoProcessor / AutoTokenizer cannot load the two sub-folders above.
VLM_PROCESSOR_REQUIRED = ("preprocessor_config.json", "tokenizer_config.json")
LLM_TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer_config.json")

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_WEIGHTS_NAME = "model.safetensors"
# The files users run with trust_remote_code, copied next to config.json.
CODE_FILES = (
    "configuration_unified.py",
    "modeling_unified.py",
    "unified_cache.py",
    "unified_folder.py",
    "unified_harmony.py",
    "unified_images.py",
    "unified_inputs.py",
    "unified_loading.py",
    "unified_prompts.py",
)
BUILD_SCRIPT = "build_repo.py"
CODE_DIR = Path(__file__).resolve().parent

_HASH_CHUNK = 16 * 1024 * 1024


class FolderError(ValueError):
    """A model folder or source folder is incomplete or inconsistent."""


# ---------------------------------------------------------------------------------------------
# Hashing and copying
# ---------------------------------------------------------------------------------------------


def hub_snapshot(repo_id: str, **settings) -> Path:
    """Download a snapshot of a Hub repo, or find it in the Hugging Face cache, and return its folder.

    `settings` are those of huggingface_hub's `snapshot_download`. In offline mode
    (HF_HUB_OFFLINE=1) only the cache is read: huggingface_hub 1.x otherwise requests the file
    list of a pinned commit from the Hub even then, and fails.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import is_offline_mode

    settings["local_files_only"] = bool(settings.get("local_files_only")) or is_offline_mode()
    return Path(snapshot_download(repo_id, **settings))


def sha256_file(path: Path, progress=None) -> str:
    """SHA-256 of a file, read in chunks; `progress(bytes)` is called after each chunk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def place_file(source: Path, target: Path, link: str, progress=None) -> tuple[str, str | None]:
    """Put `source` at `target` by hard link or copy, and return the method with a digest.

    The digest is the SHA-256 of the bytes read from `source` while copying, and None for a link.

    `link` is "hardlink" (fail when impossible), "copy", or "auto" (hard link, else copy). Symbolic
    links, such as the Hugging Face cache's snapshot entries, are resolved first. A copy goes to a
    temporary name and is renamed into place, so `target` is never a half-written file.
    """
    source = Path(os.path.realpath(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    if link in ("hardlink", "auto"):
        try:
            os.link(source, target)
            if progress is not None:
                progress(source.stat().st_size)
            return "hardlink", None
        except OSError as error:
            if link == "hardlink":
                raise FolderError(
                    f"Cannot hard-link {source} to {target}: {error}. Both must be on one file system; "
                    "use --link copy."
                ) from error
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            while chunk := reader.read(_HASH_CHUNK):
                writer.write(chunk)
                digest.update(chunk)
                if progress is not None:
                    progress(len(chunk))
        shutil.copystat(source, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return "copy", digest.hexdigest()


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


# ---------------------------------------------------------------------------------------------
# safetensors shards
# ---------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict:
    """Read a safetensors header and check that the file is as long as the header requires."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise FolderError(f"{path} is truncated: {size} bytes, too short for a safetensors header.")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > min(size - 8, 100 * 1024 * 1024):
            raise FolderError(f"{path} is not a valid safetensors file (header length {header_length}, file {size} bytes).")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FolderError(f"{path} has an unreadable safetensors header: {error}.") from error
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    expected = 8 + header_length + data_end
    if size != expected:
        raise FolderError(
            f"{path} is {size} bytes but its header describes {expected}: the file is truncated or damaged. "
            "Rebuild or re-download it."
        )
    return header


def shard_names(folder: Path) -> list[str]:
    """Names of the weight files of a model folder, read from its index (never guessed)."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise FolderError(f"{index_path} is not valid JSON: {error}.") from error
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FolderError(f"{index_path} has no weight_map.")
        return sorted(set(weight_map.values()))
    if (folder / SINGLE_WEIGHTS_NAME).is_file():
        return [SINGLE_WEIGHTS_NAME]
    raise FolderError(
        f"{folder} has neither {INDEX_NAME} nor {SINGLE_WEIGHTS_NAME}. Only safetensors weights are loaded; files "
        "such as pytorch_model.bin can run code when read and are never opened. Rebuild the folder with build_repo.py."
    )


def check_shards(folder: Path) -> list[str]:
    """Check that every shard named by the index exists and is complete; return the shard names."""
    names = shard_names(folder)
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FolderError(
                f"Weight shard {path} is missing: {folder / INDEX_NAME} lists it. Rebuild the folder with build_repo.py "
                "or download the shard again."
            )
        read_safetensors_header(path)
    return names


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `folder`, except the manifest and hidden files."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if relative.as_posix() != MANIFEST_NAME and "__pycache__" not in relative.parts:
            found.append(relative.as_posix())
    return found


def write_manifest(folder: Path, sources: dict, hashes: dict[str, str] | None = None, extra: dict | None = None) -> dict:
    """Write manifest.json: the sources and the size and SHA-256 of every file in `folder`.

    `hashes` contains digests already computed while the files were written; others are computed here.
    """
    hashes = hashes or {}
    files = {}
    for relative in list_files(folder):
        path = folder / relative
        files[relative] = {"size": path.stat().st_size, "sha256": hashes.get(relative) or sha256_file(path)}
    manifest = {"format": 1, "sources": sources, **(extra or {}), "files": files}
    temporary = folder / (MANIFEST_NAME + ".partial")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, folder / MANIFEST_NAME)
    return manifest


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FolderError(f"{path} is missing; only folders written by build_repo.py or save_pretrained have one.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FolderError(f"{path} is not valid JSON: {error}.") from error


def verify_folder(folder: Path, progress=None) -> list[str]:
    """Re-hash every file listed in the manifest; return one line per mismatch (empty when all match)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    for relative, expected in manifest.get("files", {}).items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{relative}: size {size}, manifest says {expected['size']}")
            continue
        digest = sha256_file(path, progress)
        if digest != expected["sha256"]:
            problems.append(f"{relative}: sha256 {digest}, manifest says {expected['sha256']}")
    listed = set(manifest.get("files", {}))
    for relative in list_files(folder):
        if relative not in listed:
            problems.append(f"{relative}: not in the manifest")
    return problems
