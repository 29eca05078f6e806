"""Shared fixtures: the offline test bed, a folder built from it, and the loaded model.

Everything runs offline: the Hugging Face cache points into a temporary folder and HF_HUB_OFFLINE
is set before any Hugging Face library is imported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="unified-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
for path in (str(REPO_ROOT), str(TESTS_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

import testbed  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder of real configs and tokenizers; tests that need it skip when it is absent."""
    found = testbed.find_fixtures()
    if found is None:
        pytest.skip(
            "real model data not found: ../shared/fixtures is absent (set UNIFIED_FIXTURES_DIR to point at it)"
        )
    return found


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> testbed.Sources:
    """Tiny Qwen3-VL and gpt-oss sources plus photos, built once per session."""
    return testbed.build_sources(tmp_path_factory.mktemp("testbed"))


@pytest.fixture(scope="session")
def photos(sources) -> dict[str, Path]:
    return sources.photos


@pytest.fixture(scope="session")
def edge_images(sources, tmp_path_factory) -> dict[str, Path]:
    return testbed.write_edge_case_images(tmp_path_factory.mktemp("edge"), sources.photos["astronaut"])


@pytest.fixture(scope="session")
def built_folder(sources, tmp_path_factory) -> Path:
    """A unified folder built by build_repo.py from the test-bed sources (hard links where possible)."""
    import build_repo

    output = tmp_path_factory.mktemp("built") / "unified"
    vlm = build_repo.resolve_source("vlm", str(sources.qwen3_vl), None, None)
    llm = build_repo.resolve_source("llm", str(sources.gpt_oss), None, None)
    return build_repo.build(vlm, llm, output, link="copy")


@pytest.fixture(scope="session")
def model(built_folder):
    """The model loaded from `built_folder` in its checkpoints' dtype (BF16). Shared: do not modify it."""
    from modeling_unified import UnifiedMultimodalModel

    return UnifiedMultimodalModel.from_pretrained(built_folder)


@pytest.fixture(scope="session")
def vlm_processor(built_folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(built_folder / "vlm_processor")


@pytest.fixture(scope="session")
def llm_tokenizer(built_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built_folder / "llm_tokenizer")


@pytest.fixture()
def fresh_cache(model):
    """The shared model's description cache, empty at the start and at the end of the test."""
    model.description_cache.clear()
    yield model.description_cache
    model.description_cache.clear()
