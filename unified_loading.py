"""Loading of the two sub-models: where MXFP4 runs natively, where each model goes, and folder checks."""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from packaging import version
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging

try:
    from .unified_folder import LLM_TOKENIZER_REQUIRED, VLM_PROCESSOR_REQUIRED, FolderError, check_shards
    from .unified_folder import hub_snapshot, read_safetensors_header, shard_names
except ImportError:  # imported as a top-level module, with the model folder on sys.path
    from unified_folder import LLM_TOKENIZER_REQUIRED, VLM_PROCESSOR_REQUIRED, FolderError, check_shards
    from unified_folder import hub_snapshot, read_safetensors_header, shard_names

logger = logging.get_logger(__name__)

# MXFP4 kernels need a CUDA GPU of compute capability 7.5 or newer and Triton 3.4 or newer
# (transformers' Mxfp4HfQuantizer, 5.x). The `kernels` package must also lie in the version
# window that the installed transformers accepts.
MIN_CUDA_CAPABILITY = (7, 5)
MIN_TRITON_VERSION = "3.4.0"
NATIVE, DEQUANTIZED = "native", "dequantized"
# Weights get this share of each GPU's free memory; the rest is left for activations and KV cache.
GPU_WEIGHT_SHARE = 0.9


@dataclass(frozen=True)
class Mxfp4Plan:
    """Plan for the LLM's MXFP4 experts: `path` is "native" or "dequantized", and `reason` explains the choice."""

    path: str
    reason: str
    expert_bytes_mxfp4: int
    expert_bytes_dequantized: int


# ---------------------------------------------------------------------------------------------
# MXFP4 path
# ---------------------------------------------------------------------------------------------


def expert_sizes(llm_folder: Path, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """Bytes of the expert weights as stored (MXFP4) and once dequantized to `dtype`."""
    stored = dequantized = 0
    for name in shard_names(llm_folder):
        for key, entry in read_safetensors_header(llm_folder / name).items():
            if key == "__metadata__" or not key.endswith(("_blocks", "_scales")):
                continue
            nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
            stored += nbytes
            if key.endswith("_blocks"):
                dequantized += nbytes * 2 * dtype.itemsize  # two values per byte
    return stored, dequantized


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _kernels_window() -> tuple[str, str]:
    from transformers.utils import import_utils

    return (getattr(import_utils, "KERNELS_MIN_VERSION", "0.0.0"), getattr(import_utils, "KERNELS_MAX_VERSION", "999"))


def native_mxfp4_blocker(devices: set[str]) -> str | None:
    """Why MXFP4 kernels cannot run on `devices` (the LLM's target devices), or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    non_gpu = sorted(device for device in devices if not device.startswith("cuda"))
    if non_gpu:
        return f"part of the LLM is placed on {', '.join(non_gpu)}, and MXFP4 kernels run only on CUDA GPUs"
    for device in sorted(devices):
        capability = torch.cuda.get_device_capability(torch.device(device))
        if capability < MIN_CUDA_CAPABILITY:
            return (
                f"{device} has compute capability {capability[0]}.{capability[1]}; MXFP4 kernels need "
                f"{MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]} or newer"
            )
    triton = _package_version("triton")
    if triton is None or version.parse(triton) < version.parse(MIN_TRITON_VERSION):
        return f"Triton >= {MIN_TRITON_VERSION} is not installed (found {triton or 'none'})"
    low, high = _kernels_window()
    kernels = _package_version("kernels")
    if kernels is None or not (version.parse(low) <= version.parse(kernels) < version.parse(high)):
        return f"the `kernels` package must satisfy {low} <= version < {high} (found {kernels or 'none'})"
    return None


def plan_mxfp4(llm_folder: Path, devices: set[str], dtype: torch.dtype) -> Mxfp4Plan:
    stored, dequantized = expert_sizes(llm_folder, dtype)
    blocker = native_mxfp4_blocker(devices)
    if blocker is None:
        return Mxfp4Plan(NATIVE, "CUDA GPU, Triton and kernels requirements are met", stored, dequantized)
    return Mxfp4Plan(DEQUANTIZED, blocker, stored, dequantized)


def dequantize_warning(plan: Mxfp4Plan, dtype: torch.dtype) -> str:
    extra = plan.expert_bytes_dequantized - plan.expert_bytes_mxfp4
    return (
        f"gpt-oss MXFP4 experts are dequantized to {str(dtype).removeprefix('torch.')} because {plan.reason}. "
        f"They take {format_bytes(plan.expert_bytes_dequantized)} instead of {format_bytes(plan.expert_bytes_mxfp4)} "
        f"(+{format_bytes(extra)}). Native MXFP4 needs a CUDA GPU of compute capability >= 7.5, "
        f"triton >= {MIN_TRITON_VERSION} and a compatible `kernels` package."
    )


def format_bytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------------


def split_device_map(device_map) -> tuple[object, object]:
    """Split the user's `device_map` into one value per sub-model.

    Accepted: None, a device (str, int, torch.device), "auto" / "balanced" / "sequential", or a
    dict whose keys are "" (everything), "vlm", "llm", or module names starting with "vlm." or "llm.".
    """
    if device_map is None or isinstance(device_map, (str, int, torch.device)):
        return device_map, device_map
    if not isinstance(device_map, dict):
        raise TypeError(
            f"device_map must be None, a device, 'auto', or a dict, got {type(device_map).__name__}."
        )
    parts: dict[str, dict] = {"vlm": {}, "llm": {}}
    for key, device in device_map.items():
        if key == "":
            parts["vlm"].setdefault("", device)
            parts["llm"].setdefault("", device)
            continue
        head, _, rest = key.partition(".")
        if head not in parts:
            raise ValueError(
                f"device_map key {key!r} addresses no sub-model: use 'vlm', 'llm', or a module name starting "
                "with 'vlm.' or 'llm.'."
            )
        parts[head][rest] = device
    for name, part in parts.items():
        if not part:
            raise ValueError(f"device_map places nothing of the {name}: add a {name!r} entry.")
    return parts["vlm"], parts["llm"]


def plan_placement(sizes: dict[str, int], budgets: list[tuple[object, int]]) -> dict[str, dict[object, int]]:
    """Fill devices in order with the sub-models in order, so that they share devices instead of each
    spreading over all of them. Returns, per sub-model, the bytes it may use on each device."""
    remaining = [[device, budget] for device, budget in budgets]
    plan: dict[str, dict[object, int]] = {}
    for name, size in sizes.items():
        plan[name] = {}
        left = size
        for slot in remaining:
            if left <= 0:
                break
            take = min(left, slot[1])
            if take > 0:
                plan[name][slot[0]] = take
                slot[1] -= take
                left -= take
        if left > 0:
            total = sum(budget for _, budget in budgets)
            raise ValueError(
                f"The models need {sum(sizes.values()) / 1e9:.1f} GB but the devices offer {total / 1e9:.1f} GB "
                "for weights; raise max_memory or allow offloading with a 'cpu' entry."
            )
    return plan


def gpu_budgets(max_memory: dict | None) -> list[tuple[object, int]]:
    """Bytes for weights per device: GPUs in order, then the CPU when `max_memory` names it."""
    if max_memory is not None:
        budgets = []
        for device, amount in max_memory.items():
            budgets.append((device, _to_bytes(amount)))
        return sorted(budgets, key=lambda entry: (not isinstance(entry[0], int), str(entry[0])))
    budgets = []
    for index in range(torch.cuda.device_count()):
        free, _ = torch.cuda.mem_get_info(index)
        budgets.append((index, int(free * GPU_WEIGHT_SHARE)))
    return budgets


def _to_bytes(amount) -> int:
    if isinstance(amount, int):
        return amount
    text = str(amount).strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def weight_bytes(folder: Path, dtype: torch.dtype | None, expert_bytes: int | None = None) -> int:
    """Bytes a model folder takes once loaded in `dtype` (None keeps the stored dtypes)."""
    total = 0
    for name in shard_names(folder):
        for key, entry in read_safetensors_header(folder / name).items():
            if key == "__metadata__" or key.endswith(("_blocks", "_scales")):
                continue
            count = entry["data_offsets"][1] - entry["data_offsets"][0]
            stored_dtype = entry["dtype"]
            if dtype is not None and stored_dtype in ("BF16", "F16", "F32"):
                count = count // {"BF16": 2, "F16": 2, "F32": 4}[stored_dtype] * dtype.itemsize
            total += count
    return total + (expert_bytes or 0)


def devices_of(device_map, budget_plan: dict | None = None) -> set[str]:
    """Device names ("cpu", "cuda:0", "disk") that a sub-model's device map or budget uses."""
    if budget_plan is not None:
        values = list(budget_plan)
    elif isinstance(device_map, dict):
        values = list(device_map.values())
    elif device_map in (None,):
        values = ["cpu"]
    elif device_map in ("auto", "balanced", "sequential", "balanced_low_0"):
        values = list(range(torch.cuda.device_count())) or ["cpu"]
    else:
        values = [device_map]
    names = set()
    for value in values:
        if isinstance(value, int):
            names.add(f"cuda:{value}")
        else:
            text = str(value)
            names.add("cuda:0" if text == "cuda" else text)
    return names


# ---------------------------------------------------------------------------------------------
# Folder checks
# ---------------------------------------------------------------------------------------------


def check_subfolder(folder: Path, subfolder: str, required: tuple[str, ...]) -> Path:
    path = folder / subfolder
    if not path.is_dir():
        raise FolderError(f"{path} is missing: a model folder needs {subfolder}/. Rebuild it with build_repo.py.")
    for name in required:
        if not (path / name).is_file():
            raise FolderError(f"{path / name} is missing. Rebuild the folder with build_repo.py.")
    return path


def check_model_folder(folder: Path, config) -> dict:
    """Check the sub-folders, their shards, and that each sub-config equals the top-level copy.

    Returns the sub-folders' configs by key ("vlm_config", "llm_config"), read once for the load.
    """
    loaded = {}
    for subfolder, key in ((config.vlm_subfolder, "vlm_config"), (config.llm_subfolder, "llm_config")):
        path = check_subfolder(folder, subfolder, ("config.json",))
        check_shards(path)
        loaded[key] = AutoConfig.from_pretrained(path)
        expected = getattr(config, key)
        if expected is not None:
            # Both sides go through transformers' config class, so that defaults and renamed fields agree.
            on_disk = loaded[key].to_dict()
            differences = _config_differences(expected.to_dict(), on_disk)
            if differences:
                raise FolderError(
                    f"{path / 'config.json'} does not match {key} in {folder / 'config.json'} "
                    f"(differs in: {', '.join(differences[:6])}). Rebuild the folder with build_repo.py."
                )
    llm_config_path = folder / config.llm_subfolder / "config.json"
    quantization = json.loads(llm_config_path.read_text()).get("quantization_config") or {}
    if quantization.get("quant_method") != "mxfp4":
        raise FolderError(
            f"{llm_config_path} has no MXFP4 quantization_config (found {quantization or 'none'}); the LLM must be "
            "the gpt-oss checkpoint with native MXFP4 experts. Rebuild the folder with build_repo.py."
        )
    check_subfolder(folder, config.vlm_processor_subfolder, VLM_PROCESSOR_REQUIRED)
    check_subfolder(folder, config.llm_tokenizer_subfolder, LLM_TOKENIZER_REQUIRED)
    return loaded


_VOLATILE_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures", "use_cache"}


def _config_differences(expected: dict, on_disk: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ; keys present on one side only and volatile bookkeeping are ignored."""
    differences = []
    for key, value in on_disk.items():
        if key in _VOLATILE_KEYS or key not in expected:
            continue
        other = expected[key]
        if isinstance(value, dict) and isinstance(other, dict):
            differences += _config_differences(other, value, f"{prefix}{key}.")
        elif value != other and not _numbers_equal(value, other):
            differences.append(prefix + key)
    return differences


def _numbers_equal(left, right) -> bool:
    try:
        return isinstance(left, (int, float)) and isinstance(right, (int, float)) and float(left) == float(right)
    except (TypeError, ValueError):
        return False


def resolve_folder(location: str | os.PathLike, hub_kwargs: dict) -> Path:
    """Return a local folder as it is, or download a Hub repo (or find it in the cache) as one
    snapshot, so that all parts come from the same commit."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(location).startswith((".", "/", "~")):
        raise FolderError(f"Model folder {location} was not found.")
    return hub_snapshot(str(location), **{k: v for k, v in hub_kwargs.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Loading the sub-models
# ---------------------------------------------------------------------------------------------


def load_submodel(auto_class, folder: Path, **kwargs) -> PreTrainedModel:
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        model, info = auto_class.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True, **kwargs)
    except RuntimeError as error:
        if "mismatch" in str(error).lower():
            raise FolderError(
                f"The weights in {folder} do not match {folder / 'config.json'}: {error}. Rebuild the folder with "
                "build_repo.py."
            ) from error
        raise
    except Exception as error:
        # safetensors reports damaged files with its own exception class, which has no stable import path.
        if type(error).__name__ != "SafetensorError":
            raise
        raise FolderError(
            f"A weight file in {folder} is damaged ({error}). Find it with `python build_repo.py --verify "
            f"{folder.parent}` or load with verify=True, then rebuild the folder."
        ) from error
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise FolderError(
            f"{folder} lacks {len(missing)} weights its config.json needs, e.g. {missing[:3]}. Rebuild the folder "
            "with build_repo.py."
        )
    return model


def load_llm(folder: Path, plan, *, dtype, expert_dtype, **kwargs) -> PreTrainedModel:
    from transformers import Mxfp4Config

    # NOTE: the native branch has not run yet (no GPU was available); bench/gpu_check.py exercises it.
    if plan.path == NATIVE:
        try:
            return load_submodel(AutoModelForCausalLM, folder, dtype=dtype, **kwargs)
        except (ImportError, OSError, RuntimeError) as error:
            # The native path fetches its Triton kernels from the Hub; offline or without them, fall back.
            plan = type(plan)(DEQUANTIZED, f"the MXFP4 kernels could not be loaded ({error})",
                              plan.expert_bytes_mxfp4, plan.expert_bytes_dequantized)  # fmt: skip

    logger.warning_once(dequantize_warning(plan, expert_dtype))
    quantizer_logger = logging.get_logger("transformers.quantizers.quantizer_mxfp4")
    level = quantizer_logger.level
    # Our warning above already explains the fallback; transformers would add its own for the same case.
    quantizer_logger.setLevel(logging.ERROR)
    try:
        model = load_submodel(
            AutoModelForCausalLM, folder, dtype=dtype, quantization_config=Mxfp4Config(dequantize=True), **kwargs
        )
    finally:
        quantizer_logger.setLevel(level)
    # Some transformers releases (5.0.0 among them) dequantize to BF16 whatever dtype was requested.
    for module in model.modules():
        if type(module).__name__.endswith("Experts"):
            module.to(expert_dtype)
    model._unified_mxfp4_reason = plan.reason
    return model


def loaded_mxfp4_path(llm: PreTrainedModel, plan) -> tuple[str, str]:
    experts = [module for module in llm.modules() if type(module).__name__.endswith("Experts")]
    native = any(type(module).__name__.startswith("Mxfp4") for module in experts)
    if native:
        return NATIVE, plan.reason
    return DEQUANTIZED, getattr(llm, "_unified_mxfp4_reason", plan.reason)


def remaining_memory(budgets: dict, model: PreTrainedModel) -> dict:
    used: dict = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        device = tensor.device.index if tensor.device.type == "cuda" else tensor.device.type
        used[device] = used.get(device, 0) + tensor.numel() * tensor.element_size()
    return {device: max(0, budget - used.get(device, 0)) for device, budget in budgets.items()}
