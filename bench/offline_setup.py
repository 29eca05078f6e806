"""Offline settings and import paths shared by the benchmark scripts; importing this module applies them.

Nothing can be fetched on the benchmark machines, so offline mode makes a missing file fail at once
instead of after network timeouts.
"""

import os
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for path in (str(REPO_ROOT), str(REPO_ROOT / "tests"), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)
