"""Timing, profiling and machine-description helpers shared by bench/run.py and bench/gpu_check.py.

Absolute times drift on a shared machine, so comparisons run their variants interleaved, round by
round, and report the median of the per-round ratios next to each variant's median time.
"""

from __future__ import annotations

import cProfile
import datetime
import os
import platform
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Eight questions about the five scikit-image photos, used for the batch measurements.
BATCH_PROMPTS = (
    ("astronaut", "What is the main subject of this image?"),
    ("chelsea", "What animal is this?"),
    ("coffee", "How many cups are on the table?"),
    ("rocket", "What is being launched?"),
    ("page", "What does the printed text say?"),
    ("astronaut", "What is the person wearing?"),
    ("chelsea", "What colour is the fur?"),
    ("coffee", "What drink is served?"),
)


@dataclass
class Timing:
    """Wall times in seconds of the timed runs of one variant (warm-ups excluded)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "samples_s": self.samples}


@dataclass
class Comparison:
    """Two variants timed in the same rounds; `ratios[i]` is variant a's time over variant b's in round i.

    `results` contains each variant's return values of the timed rounds, `last_results` those of the
    last round, warm-ups included when no round was timed.
    """

    a: str
    b: str
    timings: dict[str, Timing]
    ratios: list[float]
    results: dict[str, list]
    last_results: dict[str, object]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            self.a: self.timings[self.a].to_dict(),
            self.b: self.timings[self.b].to_dict(),
            "ratio_median": self.ratio,
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
            "ratios": self.ratios,
        }


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Run `function` once; return its wall time in seconds and its result."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def compare(
    a: tuple[str, Callable[[], object]],
    b: tuple[str, Callable[[], object]],
    warmups: int,
    repeats: int,
    alternate: bool = True,
    before_round: Callable[[], None] | None = None,
    seconds_of: Callable[[object], float] | None = None,
) -> Comparison:
    """Time two variants side by side: each round runs both, one right after the other.

    With `alternate`, odd rounds run b first, so that a drift in machine speed, or a warm cache
    left by the variant before, favours neither. `alternate=False` keeps the order a, b, for pairs
    where b depends on a (a follow-up question after the first one). `before_round` runs untimed
    before each round, warm-ups included. `seconds_of(result)` replaces the wall time of a run,
    for variants that time themselves (a child process that excludes its start-up).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    (name_a, run_a), (name_b, run_b) = a, b
    timings = {name_a: Timing(), name_b: Timing()}
    results: dict[str, list] = {name_a: [], name_b: []}
    ratios: list[float] = []
    last: dict[str, object] = {}
    for round_index in range(warmups + repeats):
        if before_round is not None:
            before_round()
        order = [(name_a, run_a), (name_b, run_b)]
        if alternate and round_index % 2 == 1:
            order.reverse()
        seconds = {}
        for name, run in order:
            wall, last[name] = timed(run)
            seconds[name] = seconds_of(last[name]) if seconds_of is not None else wall
        if round_index >= warmups:
            for name in (name_a, name_b):
                timings[name].samples.append(seconds[name])
                results[name].append(last[name])
            ratios.append(seconds[name_a] / seconds[name_b])
    return Comparison(name_a, name_b, timings, ratios, results, last)


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------


def profile_call(function: Callable[[], object]) -> pstats.Stats:
    """Run `function` once under cProfile and return its statistics."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        function()
    finally:
        profiler.disable()
    return pstats.Stats(profiler)


def profile_difference(
    product: Callable[[], object], baseline: Callable[[], object], runs: int = 1, top: int = 6
) -> dict:
    """Profile `runs` calls of each function, alternating, and list where `product` spends extra own time.

    Own time (time not spent in callees) is used, not cumulative time, so that a wrapper that
    merely calls the shared work does not show up. Each function's own time is its minimum over the
    runs, which drops a run that the scheduler interrupted on a busy machine.
    """
    product_runs, baseline_runs = [], []
    for _ in range(runs):
        product_runs.append(profile_call(product))
        baseline_runs.append(profile_call(baseline))
    own_product = _min_own_times(product_runs)
    own_baseline = _min_own_times(baseline_runs)
    rows = []
    for key, (calls, seconds) in own_product.items():
        base_calls, base_seconds = own_baseline.get(key, (0, 0.0))
        rows.append({
            "function": _function_label(key),
            "calls": calls,
            "baseline_calls": base_calls,
            "seconds": seconds,
            "baseline_seconds": base_seconds,
            "extra_seconds": seconds - base_seconds,
        })  # fmt: skip
    rows.sort(key=lambda row: row["extra_seconds"], reverse=True)
    return {
        "runs": runs,
        "product_seconds": min(stats.total_tt for stats in product_runs),
        "baseline_seconds": min(stats.total_tt for stats in baseline_runs),
        "rows": rows[:top],
    }


def top_own_times(stats: pstats.Stats, top: int = 6) -> list[dict]:
    """List the functions with the largest own time in one profile."""
    rows = [{"function": _function_label(key), "calls": calls, "seconds": seconds}
            for key, (calls, seconds) in _own_times(stats).items()]  # fmt: skip
    rows.sort(key=lambda row: row["seconds"], reverse=True)
    return rows[:top]


def _own_times(stats: pstats.Stats) -> dict[tuple, tuple[int, float]]:
    return {key: (value[1], value[2]) for key, value in stats.stats.items()}


def _min_own_times(runs: list[pstats.Stats]) -> dict[tuple, tuple[int, float]]:
    merged: dict[tuple, tuple[int, float]] = {}
    for stats in runs:
        for key, (calls, seconds) in _own_times(stats).items():
            if key not in merged or seconds < merged[key][1]:
                merged[key] = (calls, seconds)
    return merged


def _function_label(key: tuple) -> str:
    filename, line, name = key
    if filename == "~":  # built-in functions
        return name.strip("<>")
    parts = Path(filename).parts
    # Keep the path from the package root onwards: site-packages/transformers/... -> transformers/...
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    else:
        parts = parts[-1:]
    return f"{'/'.join(parts)}:{line}({name})"


# ---------------------------------------------------------------------------------------------
# Module timers
# ---------------------------------------------------------------------------------------------


class ModuleClock:
    """Wall time spent inside chosen modules, and the end time of each of their forward calls.

    Forward hooks bracket every call. On a CUDA module the hooks synchronize the device first, so
    that a call's time includes its kernels. This adds little, because `generate` synchronizes once
    per step anyway.
    """

    def __init__(self, modules: dict[str, object]):
        import torch

        self._torch = torch
        self.seconds = {name: 0.0 for name in modules}
        self.calls = {name: 0 for name in modules}
        self.ends: dict[str, list[float]] = {name: [] for name in modules}
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            cuda = any(parameter.is_cuda for parameter in module.parameters())
            self._handles.append(module.register_forward_pre_hook(self._pre(name, cuda)))
            self._handles.append(module.register_forward_hook(self._post(name, cuda)))

    def _sync(self, cuda: bool) -> None:
        if cuda:
            self._torch.cuda.synchronize()

    def _pre(self, name: str, cuda: bool):
        def hook(module, args):
            self._sync(cuda)
            self._started[name] = time.perf_counter()

        return hook

    def _post(self, name: str, cuda: bool):
        def hook(module, args, output):
            self._sync(cuda)
            now = time.perf_counter()
            self.seconds[name] += now - self._started.pop(name, now)
            self.calls[name] += 1
            self.ends[name].append(now)

        return hook

    def reset(self) -> None:
        for name in self.seconds:
            self.seconds[name] = 0.0
            self.calls[name] = 0
            self.ends[name] = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU, cores, memory, library versions and GPUs of this machine, plus the load average now."""
    import torch
    import transformers

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": _total_ram(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            info["gpus"].append({
                "name": properties.name,
                "memory_bytes": properties.total_memory,
                "capability": f"{properties.major}.{properties.minor}",
            })  # fmt: skip
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_ram() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().total
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def format_bytes(count: float | None) -> str:
    if count is None:
        return "n/a"
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= factor:
            return f"{count / factor:.2f} {unit}"
    return f"{count:.0f} B"
