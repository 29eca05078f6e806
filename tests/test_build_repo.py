"""build_repo.py: layout, byte-identical weights, atomic builds, --verify, Hub cache sources and faults."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import build_repo
import unified_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_VLM_ID = "Qwen/Qwen3-VL-4B-Instruct"
REAL_LLM_ID = "openai/gpt-oss-20b"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "build_repo.py"), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def lay_out_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Write `folder` into a Hugging Face cache as the snapshot `commit` of `repo_id`, refs/main included."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        blob = repo / "blobs" / sha256(path)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        entry = snapshot / path.relative_to(folder)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def folder_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in skip}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

EXPECTED_TOP_LEVEL = {
    "config.json", "README.md", "manifest.json", "build_repo.py", "configuration_unified.py", "modeling_unified.py",
    "unified_cache.py", "unified_folder.py", "unified_harmony.py", "unified_images.py", "unified_inputs.py",
    "unified_loading.py",
    "unified_prompts.py",
}  # fmt: skip


def test_layout_files(built_folder, sources):
    top = {p.name for p in built_folder.iterdir() if p.is_file()}
    assert top == EXPECTED_TOP_LEVEL
    subfolders = {p.name for p in built_folder.iterdir() if p.is_dir()}
    assert subfolders == {"vlm", "llm", "vlm_processor", "llm_tokenizer"}

    index = json.loads((sources.gpt_oss / "model.safetensors.index.json").read_text())
    llm_files = {p.name for p in (built_folder / "llm").iterdir()}
    assert llm_files == {"config.json", "generation_config.json", "model.safetensors.index.json"} | set(
        index["weight_map"].values()
    )
    vlm_index = json.loads((sources.qwen3_vl / "model.safetensors.index.json").read_text())
    vlm_files = {p.name for p in (built_folder / "vlm").iterdir()}
    assert vlm_files == {"config.json", "generation_config.json", "model.safetensors.index.json"} | set(
        vlm_index["weight_map"].values()
    )
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                 "tokenizer_config.json"):  # fmt: skip
        assert (built_folder / "vlm_processor" / name).is_file(), name
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        assert (built_folder / "llm_tokenizer" / name).is_file(), name


def test_layout_skips_decoys(built_folder):
    names = {p.relative_to(built_folder).as_posix() for p in built_folder.rglob("*")}
    assert not any(name.startswith(("original", "metal")) or "/original" in name or "/metal" in name for name in names)
    assert "llm/LICENSE" not in names
    assert "llm/README.md" not in names


def test_config_resolves_remote_class(built_folder):
    result = run_python(
        f"""
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained({str(built_folder)!r}, trust_remote_code=True)
        print(type(config).__name__, config.model_type, config.vlm_config.model_type, config.llm_config.model_type)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["UnifiedConfig", "unified_vlm_llm", "qwen3_vl", "gpt_oss"]
    config = json.loads((built_folder / "config.json").read_text())
    assert config["architectures"] == ["UnifiedMultimodalModel"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_unified.UnifiedConfig",
        "AutoModel": "modeling_unified.UnifiedMultimodalModel",
    }
    for key in ("vision_prompt", "description_max_new_tokens", "reasoning_effort", "vlm_subfolder", "transformers_version"):
        assert key in config, key


def test_weights_byte_identical(built_folder, sources):
    for source, subfolder in ((sources.gpt_oss, "llm"), (sources.qwen3_vl, "vlm")):
        for shard in sorted(source.glob("*.safetensors")):
            assert sha256(built_folder / subfolder / shard.name) == sha256(shard), shard.name
    assert (built_folder / "llm" / "config.json").read_bytes() == (sources.gpt_oss / "config.json").read_bytes()
    llm_config = json.loads((built_folder / "llm" / "config.json").read_text())
    assert llm_config["quantization_config"]["quant_method"] == "mxfp4"


def test_manifest_lists_every_file(built_folder, sources):
    manifest = json.loads((built_folder / "manifest.json").read_text())
    listed = set(manifest["files"])
    present = {p.relative_to(built_folder).as_posix() for p in built_folder.rglob("*") if p.is_file()}
    assert listed == present - {"manifest.json"}
    for relative, entry in manifest["files"].items():
        assert entry["size"] == (built_folder / relative).stat().st_size
    shard = "llm/model-00000-of-00002.safetensors"
    assert manifest["files"][shard]["sha256"] == sha256(sources.gpt_oss / "model-00000-of-00002.safetensors")
    assert manifest["sources"]["llm"]["repo"] == str(sources.gpt_oss)


def test_model_card_metadata(built_folder):
    card = (built_folder / "README.md").read_text()
    header = card.split("---")[1]
    assert "license: apache-2.0" in header
    assert "pipeline_tag: image-text-to-text" in header
    assert "library_name: transformers" in header
    assert f"- {REAL_VLM_ID}" in header
    assert f"- {REAL_LLM_ID}" in header
    assert "trust_remote_code=True" in card


# ---------------------------------------------------------------------------------------------
# Atomic builds and --verify
# ---------------------------------------------------------------------------------------------


def test_killed_build_leaves_nothing_loadable(sources, tmp_path):
    output = tmp_path / "unified"
    # The build process kills itself with SIGKILL once 60 MB have been copied, inside a weight file.
    killed = run_python(
        f"""
        import os, signal, sys
        import unified_folder
        real_place = unified_folder.place_file
        copied = [0]
        def place_then_die(source, target, link, progress=None):
            def counting(count):
                copied[0] += count
                if progress:
                    progress(count)
                if copied[0] > 60_000_000:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_place(source, target, link, counting)
        unified_folder.place_file = place_then_die
        import build_repo
        sys.exit(build_repo.main(["--vlm", {str(sources.qwen3_vl)!r}, "--llm", {str(sources.gpt_oss)!r},
                                  "--output", {str(output)!r}, "--link", "copy"]))
        """
    )
    assert killed.returncode == -9
    assert not output.exists()
    staging = tmp_path / ".unified.partial"
    assert staging.is_dir()
    assert not (staging / "config.json").exists()

    load = run_python(
        f"""
        from modeling_unified import UnifiedMultimodalModel
        UnifiedMultimodalModel.from_pretrained({str(output)!r})
        """
    )
    assert load.returncode != 0
    assert "was not found" in load.stderr

    rerun = run_build("--vlm", str(sources.qwen3_vl), "--llm", str(sources.gpt_oss), "--output", str(output),
                      "--link", "copy")  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert not staging.exists()
    verify = run_build("--verify", str(output))
    assert verify.returncode == 0, verify.stderr


def test_verify_catches_flipped_byte(built_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built_folder, copy)
    weight_files = sorted(copy.rglob("*.safetensors"))
    assert len(weight_files) == 5
    assert unified_folder.verify_folder(copy) == []
    for path in weight_files:
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
        result = run_build("--verify", str(copy))
        relative = path.relative_to(copy).as_posix()
        assert result.returncode == 1
        assert f"{relative}: sha256" in result.stderr
        path.write_bytes(original)


def test_verify_names_missing_and_extra_files(built_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built_folder, copy)
    (copy / "vlm" / "generation_config.json").unlink()
    (copy / "notes.txt").write_text("extra")
    problems = unified_folder.verify_folder(copy)
    assert "vlm/generation_config.json: missing" in problems
    assert "notes.txt: not in the manifest" in problems


def test_output_not_overwritten_without_force(sources, tmp_path):
    output = tmp_path / "unified"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    result = run_build("--vlm", str(sources.qwen3_vl), "--llm", str(sources.gpt_oss), "--output", str(output))
    assert result.returncode == 2
    assert "--force" in result.stderr
    assert (output / "keep.txt").read_text() == "user data"

    forced = run_build("--vlm", str(sources.qwen3_vl), "--llm", str(sources.gpt_oss), "--output", str(output), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (output / "keep.txt").exists()
    assert (output / "manifest.json").is_file()


def test_hardlinks_share_inodes(sources, tmp_path):
    output = tmp_path / "linked"
    vlm = build_repo.resolve_source("vlm", str(sources.qwen3_vl), None, None)
    llm = build_repo.resolve_source("llm", str(sources.gpt_oss), None, None)
    build_repo.build(vlm, llm, output, link="hardlink")
    shard = "model-00002-of-00002.safetensors"
    assert os.stat(output / "llm" / shard).st_ino == os.stat(sources.gpt_oss / shard).st_ino
    assert unified_folder.verify_folder(output) == []


# ---------------------------------------------------------------------------------------------
# Hub sources through the Hugging Face cache
# ---------------------------------------------------------------------------------------------


def test_offline_cache_build_equals_local(sources, built_folder, tmp_path):
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, REAL_VLM_ID, sources.qwen3_vl, "a" * 40)
    lay_out_hub_cache(cache, REAL_LLM_ID, sources.gpt_oss, "b" * 40)
    output = tmp_path / "from-cache"
    result = run_build("--vlm", REAL_VLM_ID, "--llm", REAL_LLM_ID, "--output", str(output), "--link", "copy",
                       env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr

    skip = ("README.md", "manifest.json")
    assert folder_digest(output, skip) == folder_digest(built_folder, skip)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["sources"]["vlm"] == {"repo": REAL_VLM_ID, "revision": None, "commit": "a" * 40}
    assert manifest["sources"]["llm"]["commit"] == "b" * 40
    assert "b" * 40 in (output / "README.md").read_text()


def test_offline_without_cache_fails_clearly(tmp_path):
    result = run_build("--vlm", REAL_VLM_ID, "--llm", REAL_LLM_ID, "--output", str(tmp_path / "out"),
                       env={"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 2
    assert REAL_VLM_ID in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr
    assert not (tmp_path / "out").exists()


def test_download_requests_only_needed_files(sources, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, token=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, list(allow_patterns)))
        return str(sources.gpt_oss)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    build_repo.resolve_source("llm", REAL_LLM_ID, "main", None)
    every_file = [p.relative_to(sources.gpt_oss).as_posix() for p in sources.gpt_oss.rglob("*") if p.is_file()]

    from fnmatch import fnmatch

    requested = {name for name in every_file if any(fnmatch(name, pattern) for pattern in calls[-1][2])}
    assert not any(name.startswith(("original/", "metal/")) for name in requested)
    index = json.loads((sources.gpt_oss / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) <= requested
    assert calls[0][1] == "main"
    assert calls[1][1] == sources.gpt_oss.name  # the second call is pinned to the commit the first resolved


def test_download_failure_says_how_to_resume(monkeypatch):
    import huggingface_hub

    def broken(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    with pytest.raises(build_repo.BuildError, match="Rerun the same command to resume"):
        build_repo.resolve_source("vlm", REAL_VLM_ID, None, None)


# ---------------------------------------------------------------------------------------------
# Source validation and disk faults
# ---------------------------------------------------------------------------------------------


def damaged_source(source: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(source, copy)
    return copy


@pytest.mark.parametrize(
    ("role", "damage", "message"),
    [
        ("vlm", "model_type", "model_type 'llava'"),
        ("llm", "quantization", "no MXFP4 quantization_config"),
        ("llm", "missing_shard", "model-00001-of-00002.safetensors is missing"),
        ("llm", "truncated_shard", "model-00002-of-00002.safetensors is"),
        ("vlm", "missing_config", "config.json is missing"),
        ("llm", "missing_tokenizer", "tokenizer.json is missing"),
    ],
)
def test_invalid_source_named(sources, tmp_path, role, damage, message):
    folder = damaged_source(sources.qwen3_vl if role == "vlm" else sources.gpt_oss, tmp_path, role)
    config_path = folder / "config.json"
    if damage == "model_type":
        config = json.loads(config_path.read_text())
        config["model_type"] = "llava"
        config_path.write_text(json.dumps(config))
    elif damage == "quantization":
        config = json.loads(config_path.read_text())
        del config["quantization_config"]
        config_path.write_text(json.dumps(config))
    elif damage == "missing_shard":
        (folder / "model-00001-of-00002.safetensors").unlink()
    elif damage == "truncated_shard":
        shard = folder / "model-00002-of-00002.safetensors"
        shard.write_bytes(shard.read_bytes()[:-1000])
    elif damage == "missing_config":
        config_path.unlink()
    elif damage == "missing_tokenizer":
        (folder / "tokenizer.json").unlink()
    vlm = str(folder) if role == "vlm" else str(sources.qwen3_vl)
    llm = str(folder) if role == "llm" else str(sources.gpt_oss)
    result = run_build("--vlm", vlm, "--llm", llm, "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists()


def test_swapped_sources_named(sources, tmp_path):
    result = run_build("--vlm", str(sources.gpt_oss), "--llm", str(sources.qwen3_vl), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "model_type 'gpt_oss', expected 'qwen3_vl'" in result.stderr
    assert "swapped" in result.stderr


def test_free_space_checked_before_copying(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    vlm = build_repo.resolve_source("vlm", str(sources.qwen3_vl), None, None)
    llm = build_repo.resolve_source("llm", str(sources.gpt_oss), None, None)
    with pytest.raises(build_repo.BuildError, match="only 0.0 GB are free"):
        build_repo.build(vlm, llm, tmp_path / "out", link="copy")
    assert not (tmp_path / ".out.partial").exists()


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a real full disk needs a tmpfs mount, which failed here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_removes_partial_build(sources, small_disk):
    output = small_disk / "unified"
    # The free-space check is switched off so that the copy itself runs into the full file system.
    result = run_python(
        f"""
        import sys
        import build_repo
        build_repo._check_free_space = lambda *args: None
        sys.exit(build_repo.main(["--vlm", {str(sources.qwen3_vl)!r}, "--llm", {str(sources.gpt_oss)!r},
                                  "--output", {str(output)!r}, "--link", "copy"]))
        """
    )
    assert result.returncode == 2
    assert "disk holding" in result.stderr
    assert "is full" in result.stderr
    assert list(small_disk.iterdir()) == []


def test_disk_error_detection():
    assert unified_folder.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not unified_folder.is_disk_full(OSError(errno.EACCES, "Permission denied"))
