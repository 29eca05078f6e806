"""A bounded, thread-safe LRU cache of stage-1 descriptions, keyed by image content and prompt."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict


def description_key(fingerprints: list[str], prompt: str, settings: dict) -> str:
    """Key of one description: the content hashes of its images or video, the filled stage-1 prompt
    (which carries the question in question-aware mode) and the generation settings that shape it."""
    payload = json.dumps({"visual": fingerprints, "prompt": prompt, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class DescriptionCache:
    """Least-recently-used store of descriptions. `max_entries=0` disables it."""

    def __init__(self, max_entries: int = 128):
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
            raise ValueError(f"description cache size must be an integer >= 0, got {max_entries!r}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
            return None

    def put(self, key: str, description: str) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = description
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries
