"""UnifiedMultimodalModel: Qwen3-VL describes the images, gpt-oss answers from the description.

    model = UnifiedMultimodalModel.from_pretrained(folder, dtype=torch.bfloat16, device_map="auto")
    answer = model.generate(images=image, text_prompt="What is in this picture?")

Stage 1 runs the vision-language model on each image with a question-aware prompt and keeps its
text. Stage 2 renders a harmony prompt with gpt-oss's chat template and returns only the text of
the `final` channel. No weights are trained or added. Prompt building, harmony parsing, image
loading and the description cache live in their own modules; this file holds the calls into
transformers.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from packaging import version
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.utils import logging

try:
    from .configuration_unified import REASONING_EFFORTS, UnifiedConfig
    from .unified_cache import DescriptionCache
    from .unified_folder import BUILD_SCRIPT, CODE_DIR, CODE_FILES, MANIFEST_NAME, FolderError, place_file
    from .unified_folder import read_manifest, verify_folder, write_manifest
    from .unified_harmony import FINAL_CHANNEL_PREFIX, HarmonyStreamParser, HarmonyTokenIds, parse_reply
    from .unified_images import ImageLoadError
    from .unified_inputs import DescriptionJob, Request, chat_conversation, chat_option_kwargs, check_non_negative_int
    from .unified_inputs import check_positive_int, check_sampling_settings, description_jobs, normalize_requests
    from .unified_inputs import parse_chat
    from .unified_loading import NATIVE, check_model_folder, devices_of, gpu_budgets, load_llm, load_submodel
    from .unified_loading import loaded_mxfp4_path, plan_mxfp4, plan_placement, remaining_memory, resolve_folder
    from .unified_loading import split_device_map, weight_bytes
    from .unified_prompts import DESCRIPTION_MODES, VisualDescription, build_answer_messages, build_vision_messages
except ImportError:  # imported as a top-level module, with the model folder on sys.path
    from configuration_unified import REASONING_EFFORTS, UnifiedConfig
    from unified_cache import DescriptionCache
    from unified_folder import BUILD_SCRIPT, CODE_DIR, CODE_FILES, MANIFEST_NAME, FolderError, place_file
    from unified_folder import read_manifest, verify_folder, write_manifest
    from unified_harmony import FINAL_CHANNEL_PREFIX, HarmonyStreamParser, HarmonyTokenIds, parse_reply
    from unified_images import ImageLoadError
    from unified_inputs import DescriptionJob, Request, chat_conversation, chat_option_kwargs, check_non_negative_int
    from unified_inputs import check_positive_int, check_sampling_settings, description_jobs, normalize_requests
    from unified_inputs import parse_chat
    from unified_loading import NATIVE, check_model_folder, devices_of, gpu_budgets, load_llm, load_submodel
    from unified_loading import loaded_mxfp4_path, plan_mxfp4, plan_placement, remaining_memory, resolve_folder
    from unified_loading import split_device_map, weight_bytes
    from unified_prompts import DESCRIPTION_MODES, VisualDescription, build_answer_messages, build_vision_messages

logger = logging.get_logger(__name__)

# Every helper module is imported here directly, because some transformers releases (5.0.0 among
# them) copy only a remote-code file's direct relative imports into their module cache.
__all__ = ["UnifiedMultimodalModel", "UnifiedGenerationOutput", "FolderError", "ImageLoadError"]

# The range this file is tested with; the lowest version has a CI job of its own.
MIN_TRANSFORMERS_VERSION = "5.0.0"
MAX_TRANSFORMERS_VERSION = "6.0.0"


def check_transformers_version(installed: str = transformers.__version__) -> None:
    parsed = version.parse(installed)
    if not version.parse(MIN_TRANSFORMERS_VERSION) <= parsed < version.parse(MAX_TRANSFORMERS_VERSION):
        raise ImportError(
            f"UnifiedMultimodalModel supports transformers >= {MIN_TRANSFORMERS_VERSION}, < {MAX_TRANSFORMERS_VERSION}; "
            f"found {installed}. Install a supported release: pip install 'transformers>={MIN_TRANSFORMERS_VERSION},"
            f"<{MAX_TRANSFORMERS_VERSION}'."
        )


check_transformers_version()

# Arguments of `generate` that belong to this pipeline, not to stage 2's generation settings.
_RESERVED_KWARGS = {"input_ids", "attention_mask", "pixel_values", "inputs", "images", "text", "messages"}


@dataclass
class UnifiedGenerationOutput:
    """Everything one question produced, returned by `generate(..., return_dict=True)`.

    Attributes:
        answer: text of gpt-oss's final channel, without special tokens.
        descriptions: stage-1 texts, one per image (or per image set or video), in input order.
        reasoning: text of the analysis channel.
        stop_reason: what ended stage 2: "return" (<|return|>), "call" (<|call|>), "end_of_text",
            or "max_new_tokens" when the budget ran out.
        forced_final: True when the reply reached the budget inside its reasoning and the final
            channel was opened by the pipeline, so that the answer was written in the reserve.
        description_tokens: tokens generated by stage 1 for this question (cached ones excluded).
        cached_descriptions: descriptions served from the cache instead of the vision model.
        prompt_tokens: tokens of the stage-2 prompt.
        reasoning_tokens / answer_tokens: tokens in the analysis and final channels.
        generated_tokens: all tokens stage 2 generated, the appended final-channel header excluded.
            Channel headers and text outside any channel count here too, so this can exceed
            reasoning_tokens + answer_tokens.
        stage1_seconds / stage2_seconds: wall time of each stage for the call (shared by a batch).
        llm_output_ids: the stage-2 token ids after the prompt, the appended header included.
    """

    answer: str
    descriptions: list[VisualDescription] = field(default_factory=list)
    reasoning: str = ""
    stop_reason: str = ""
    forced_final: bool = False
    description_tokens: int = 0
    cached_descriptions: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    generated_tokens: int = 0
    stage1_seconds: float = 0.0
    stage2_seconds: float = 0.0
    llm_output_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class _Options:
    max_new_tokens: int
    reasoning_effort: str
    answer_reserve_tokens: int
    description_mode: str
    multi_image_mode: str
    vision_prompt: str
    description_max_new_tokens: int
    vision_generation: dict
    max_image_pixels: int | None
    max_image_bytes: int
    use_cache: bool
    seed: int | None
    generation_overrides: dict
    generation_kwargs: dict
    base_generation_config: GenerationConfig | None


@dataclass
class _Reply:
    ids: list[int]
    prompt_tokens: int
    forced_final: bool = False


class _FinalChannelStreamer:
    """Sits between `generate` and the user's streamer and lets only final-channel tokens through.

    transformers' streamers treat their first `put` as the prompt; an empty tensor is passed there
    once, so `skip_prompt=True` and `skip_prompt=False` both show the answer alone.
    """

    def __init__(self, streamer, parser: HarmonyStreamParser):
        self.streamer = streamer
        self.parser = parser
        self._prompt_pending = True
        self._announced = False

    def new_pass(self) -> None:
        self._prompt_pending = True

    def put(self, value) -> None:
        if self._prompt_pending:
            self._prompt_pending = False
            if not self._announced:
                self._announced = True
                self.streamer.put(torch.empty(0, dtype=torch.long))
            return
        ids = value.reshape(-1).tolist()
        passed = [token for token in ids if self.parser.feed(token)]
        if passed:
            self.streamer.put(torch.tensor(passed, dtype=torch.long))

    def end(self) -> None:
        """Called by `generate` after each pass; the user's streamer ends once, in `finish`."""

    def finish(self) -> None:
        self.streamer.end()


class UnifiedMultimodalModel(PreTrainedModel):
    """A vision-language model and a language model run as one: see the module docstring."""

    config_class = UnifiedConfig
    base_model_prefix = "unified"
    supports_gradient_checkpointing = False

    def __init__(self, config: UnifiedConfig, vlm: PreTrainedModel | None = None, llm: PreTrainedModel | None = None):
        super().__init__(config)
        # Sub-models built from configs get random weights; from_pretrained passes loaded ones. post_init
        # is not called because it would initialise weights again.
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.vlm_config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.llm_config)
        self.mxfp4_path: str | None = None
        self.mxfp4_reason: str | None = None
        self.source_folder: Path | None = None
        self.description_cache = DescriptionCache(config.description_cache_size)
        self._vlm_processor = None
        self._llm_tokenizer = None
        self._lock = threading.RLock()

    # -----------------------------------------------------------------------------------------
    # Loading
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config: UnifiedConfig | None = None,
        dtype="auto",
        device_map=None,
        max_memory: dict | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        verify: bool = False,
        **kwargs,
    ) -> UnifiedMultimodalModel:
        """Load both sub-models from a folder built by build_repo.py, or from a Hub repo id.

        Args:
            pretrained_model_name_or_path: local folder or Hub repo id. A repo is fetched as one
                snapshot, so all parts come from the same commit.
            dtype: dtype of the VLM and of the LLM's unquantized weights ("auto" keeps the
                checkpoints' BF16). The LLM's experts stay MXFP4 where kernels can run them.
            device_map: None (CPU), a device, "auto", or a dict with "vlm" / "llm" entries or
                module names prefixed "vlm." / "llm.". With "auto" the two models fill the GPUs
                in order, VLM first, so that they share GPUs instead of each spreading over all.
            max_memory: bytes (or strings like "20GiB") per device for the weights.
            attn_implementation: passed to both sub-models ("sdpa", "eager", ...).
            revision, token, cache_dir, local_files_only, force_download: Hub download settings.
            verify: re-hash every file against manifest.json before loading (slow for 22 GB).

        Raises:
            FolderError (a ValueError) naming the path when a sub-folder, shard or config is
            missing, truncated or inconsistent.
        """
        if model_args:
            raise TypeError(f"from_pretrained takes no extra positional arguments, got {len(model_args)}.")
        for ignored in ("trust_remote_code", "adapter_kwargs", "_from_auto", "subfolder", "proxies", "code_revision"):
            kwargs.pop(ignored, None)
        if "torch_dtype" in kwargs:
            dtype = kwargs.pop("torch_dtype")
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)

        hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir,
                      "local_files_only": local_files_only, "force_download": force_download or None}  # fmt: skip
        folder = resolve_folder(pretrained_model_name_or_path, hub_kwargs)
        if config is None:
            config = UnifiedConfig.from_pretrained(folder)
        sub_configs = check_model_folder(folder, config)
        if verify:
            problems = verify_folder(folder)
            if problems:
                raise FolderError(f"{folder} does not match its {MANIFEST_NAME}:\n  " + "\n  ".join(problems))

        vlm_folder, llm_folder = folder / config.vlm_subfolder, folder / config.llm_subfolder
        vlm_map, llm_map = split_device_map(device_map)
        common = dict(kwargs)
        if attn_implementation is not None:
            common["attn_implementation"] = attn_implementation
        load_dtype = None if dtype == "auto" else dtype
        expert_dtype = load_dtype or torch.bfloat16

        # With "auto" on GPUs, both models are checked against one budget before any weight loads.
        # NOTE: this branch has not run on a GPU machine yet; plan_placement is tested on its own.
        vlm_memory = llm_memory = max_memory
        if vlm_map in ("auto", "balanced", "sequential") and torch.cuda.is_available():
            budgets = gpu_budgets(max_memory)
            plan = plan_mxfp4(llm_folder, {f"cuda:{d}" for d, _ in budgets if isinstance(d, int)}, expert_dtype)
            sizes = {
                "vlm": weight_bytes(vlm_folder, load_dtype),
                "llm": weight_bytes(llm_folder, load_dtype, plan.expert_bytes_mxfp4 if plan.path == NATIVE
                                    else plan.expert_bytes_dequantized),
            }  # fmt: skip
            placement = plan_placement(sizes, budgets)
            vlm_map = llm_map = "sequential"
            vlm_memory = dict(budgets)
            llm_devices = devices_of(None, placement["llm"])
        else:
            llm_devices = devices_of(llm_map)
        plan = plan_mxfp4(llm_folder, llm_devices, expert_dtype)

        # The sub-configs read by the folder check are passed on, so that each config.json is parsed once.
        vlm = load_submodel(
            AutoModelForImageTextToText, vlm_folder, config=sub_configs["vlm_config"], dtype=dtype,
            device_map=vlm_map, max_memory=vlm_memory, **common,
        )  # fmt: skip
        if vlm_map == "sequential":
            llm_memory = remaining_memory(vlm_memory, vlm)
        llm = load_llm(llm_folder, plan, config=sub_configs["llm_config"], dtype=dtype, expert_dtype=expert_dtype,
                       device_map=llm_map, max_memory=llm_memory, **common)  # fmt: skip

        model = cls(config, vlm=vlm, llm=llm)
        model.source_folder = folder
        model.name_or_path = str(pretrained_model_name_or_path)
        model.mxfp4_path, model.mxfp4_reason = loaded_mxfp4_path(llm, plan)
        model.eval()
        return model

    def get_vlm_processor(self):
        """Return the folder's stage-1 processor, loading it on first use."""
        if self._vlm_processor is None:
            self._vlm_processor = AutoProcessor.from_pretrained(self._part(self.config.vlm_processor_subfolder))
        return self._vlm_processor

    def get_llm_tokenizer(self):
        """Return the folder's stage-2 tokenizer, loading it on first use."""
        if self._llm_tokenizer is None:
            self._llm_tokenizer = AutoTokenizer.from_pretrained(self._part(self.config.llm_tokenizer_subfolder))
        return self._llm_tokenizer

    def _part(self, subfolder: str) -> Path:
        if self.source_folder is None:
            raise ValueError(
                "This model was not loaded with from_pretrained, so it has no folder to load processors from; "
                "pass vlm_processor= and llm_tokenizer= explicitly."
            )
        return self.source_folder / subfolder

    # -----------------------------------------------------------------------------------------
    # Saving
    # -----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, is_main_process: bool = True, push_to_hub: bool = False, **kwargs):
        """Write the folder layout again: VLM saved by transformers, LLM files copied byte for byte.

        The LLM's MXFP4 files are copied from the folder the model was loaded from, because a
        dequantized model would otherwise be written as ~4x larger BF16. NOTE: changes made to the
        LLM's weights in memory are therefore not saved.
        """
        if not is_main_process:
            return
        if push_to_hub:
            raise ValueError("Use model.push_to_hub(repo_id) to upload; save_pretrained writes a local folder only.")
        if self.source_folder is None:
            raise ValueError("save_pretrained needs the folder the model was loaded from, to copy the MXFP4 LLM files.")
        target = Path(save_directory)
        if target.resolve() == self.source_folder.resolve():
            raise ValueError(f"save_pretrained cannot write into the folder it was loaded from ({target}).")
        target.mkdir(parents=True, exist_ok=True)

        self.config.save_pretrained(target)
        self.vlm.save_pretrained(target / self.config.vlm_subfolder, **kwargs)
        source = self.source_folder
        for subfolder in (self.config.llm_subfolder, self.config.vlm_processor_subfolder,
                          self.config.llm_tokenizer_subfolder):  # fmt: skip
            for path in sorted((source / subfolder).iterdir()):
                if path.is_file():
                    place_file(path, target / subfolder / path.name, link="copy")
        for name in (*CODE_FILES, BUILD_SCRIPT, "README.md"):
            origin = source / name if (source / name).is_file() else CODE_DIR / name
            if origin.is_file():
                shutil.copyfile(origin, target / name)

        sources = read_manifest(source).get("sources", {}) if (source / MANIFEST_NAME).is_file() else {}
        write_manifest(target, sources, extra={"saved_from": str(source)})

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
                    **kwargs) -> str:  # fmt: skip
        """Save the folder to a temporary directory and upload it with huggingface_hub; return the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        with tempfile.TemporaryDirectory() as temporary:
            self.save_pretrained(temporary)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=temporary, commit_message=commit_message or "Upload unified model",
                revision=revision, create_pr=create_pr, repo_type="model",
            )  # fmt: skip
        return str(getattr(commit, "commit_url", commit))

    # -----------------------------------------------------------------------------------------
    # Generation
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        images=None,
        text_prompt: str | list[str] | None = None,
        vlm_processor=None,
        llm_tokenizer=None,
        max_new_tokens: int = 1024,
        *,
        videos=None,
        reasoning_effort: str | None = None,
        answer_reserve_tokens: int | None = None,
        streamer=None,
        return_dict: bool = False,
        seed: int | None = None,
        description_mode: str | None = None,
        multi_image_mode: str = "each",
        vision_prompt: str | None = None,
        description_max_new_tokens: int | None = None,
        vision_generation_kwargs: dict | None = None,
        max_image_pixels: int | None = None,
        max_image_bytes: int = 50 * 1024 * 1024,
        use_description_cache: bool = True,
        **generation_kwargs,
    ):
        """Answer a question about images: stage 1 describes them, stage 2 answers from the text.

        Args:
            images: None (text only), one image, or a list of images for one prompt; for a batch,
                a list with one entry (None, an image or a list of images) per prompt. An image is
                a PIL image, a path, an http(s) or data: URL, bytes, a NumPy array (H x W x C) or
                a torch tensor (C x H x W).
            text_prompt: the question, or a list of questions (a batch).
            vlm_processor, llm_tokenizer: default to the folder's vlm_processor/ and llm_tokenizer/.
            max_new_tokens: stage-2 token budget for reasoning plus answer. Up to
                `answer_reserve_tokens` of it (at most half) is held back for the answer.
            videos: a video file path or a list of frames; for a batch, one entry per prompt.
            reasoning_effort: "low", "medium" or "high"; defaults to `config.reasoning_effort`.
            answer_reserve_tokens: tokens of `max_new_tokens` kept for the final channel when
                the reasoning uses up the rest. 0 turns this off. Defaults to
                `config.answer_reserve_tokens`.
            streamer: a transformers streamer (`TextStreamer`, `TextIteratorStreamer`); it receives
                only final-channel text. Batches of one prompt only.
            return_dict: return `UnifiedGenerationOutput` instead of the answer string.
            seed: seed for stage-2 (and stage-1) sampling; the global RNG state is restored after.
            description_mode: "question" (default from config) or "generic".
            multi_image_mode: "each" (one description per image, labelled Image 1, Image 2, ...)
                or "together" (one description of all images of a prompt).
            vision_prompt: stage-1 prompt template overriding the config's.
            description_max_new_tokens: stage-1 token budget per description.
            vision_generation_kwargs: stage-1 generation settings (greedy by default).
            max_image_pixels: pixel budget per image; the processor's own limit by default.
            max_image_bytes: size limit of images downloaded from URLs.
            use_description_cache: look descriptions up in, and add them to, `description_cache`.
            **generation_kwargs: stage-2 settings for `generate` (do_sample, temperature, top_p,
                top_k, repetition_penalty, logits_processor, ...). The LLM's generation_config.json
                gives the defaults.

        Returns:
            The answer string; a list of them for a batch; `UnifiedGenerationOutput` objects with
            `return_dict=True`.

        Raises:
            TypeError / ValueError naming the argument for invalid input, and ImageLoadError (a
            ValueError) for images that cannot be read.
        """
        requests, is_batch = normalize_requests(images, text_prompt, videos)
        options = self._options(
            max_new_tokens=max_new_tokens, reasoning_effort=reasoning_effort,
            answer_reserve_tokens=answer_reserve_tokens, description_mode=description_mode,
            multi_image_mode=multi_image_mode, vision_prompt=vision_prompt,
            description_max_new_tokens=description_max_new_tokens, vision_generation_kwargs=vision_generation_kwargs,
            max_image_pixels=max_image_pixels, max_image_bytes=max_image_bytes,
            use_description_cache=use_description_cache, seed=seed, generation_kwargs=generation_kwargs,
        )  # fmt: skip
        if streamer is not None and len(requests) > 1:
            raise ValueError(f"streamer works with one prompt at a time; got a batch of {len(requests)}.")

        with self._lock:
            vlm_processor, llm_tokenizer = self._resolve_processors(vlm_processor, llm_tokenizer, requests)
            started = time.perf_counter()
            jobs = self._description_jobs(requests, options, vlm_processor)
            self._describe(jobs, vlm_processor, options)
            stage1_seconds = time.perf_counter() - started

            conversations = []
            for index, request in enumerate(requests):
                descriptions = [VisualDescription(job.label, job.text or "") for job in jobs if job.request == index]
                conversations.append(build_answer_messages(request.question, descriptions, self.config.developer_prompt))
            started = time.perf_counter()
            replies = self._answer(conversations, llm_tokenizer, options, streamer)
            stage2_seconds = time.perf_counter() - started

            # Decoding stays under the lock: a fast tokenizer must not be used by two threads at once.
            outputs = []
            for index, reply in enumerate(replies):
                own_jobs = [job for job in jobs if job.request == index]
                output = self._make_output(reply, llm_tokenizer, own_jobs, stage1_seconds, stage2_seconds)
                outputs.append(output if return_dict else output.answer)
        return outputs if is_batch else outputs[0]

    def chat(
        self,
        messages: list[dict],
        vlm_processor=None,
        llm_tokenizer=None,
        max_new_tokens: int = 1024,
        *,
        return_dict: bool = False,
        **kwargs,
    ):
        """Answer the last user turn of an OpenAI-style conversation.

        `messages` holds {"role": "system" | "developer" | "user" | "assistant", "content": ...},
        where content is a string or a list of parts: {"type": "text", "text": ...},
        {"type": "image", "image": <any image input>} or {"type": "image_url", "image_url":
        {"url": ...}}. Every image is described with the text of its own turn as the question, and
        descriptions are cached by image content, so follow-up turns do not run the vision model
        again. `messages` is not modified.

        Returns {"role": "assistant", "content": answer}, or `UnifiedGenerationOutput` with
        `return_dict=True`. Other keyword arguments are those of `generate`.
        """
        turns = parse_chat(messages)
        streamer = kwargs.pop("streamer", None)
        option_kwargs = chat_option_kwargs(kwargs)
        options = self._options(max_new_tokens=max_new_tokens, generation_kwargs=kwargs, **option_kwargs)

        with self._lock:
            user_requests = [Request(turn["text"], turn["images"]) for turn in turns if turn["role"] == "user"]
            vlm_processor, llm_tokenizer = self._resolve_processors(vlm_processor, llm_tokenizer, user_requests)
            started = time.perf_counter()
            jobs = self._description_jobs(user_requests, options, vlm_processor)
            self._describe(jobs, vlm_processor, options)
            stage1_seconds = time.perf_counter() - started

            conversation = chat_conversation(turns, jobs, self.config.developer_prompt)
            started = time.perf_counter()
            reply = self._answer([conversation], llm_tokenizer, options, streamer)[0]
            stage2_seconds = time.perf_counter() - started
            output = self._make_output(reply, llm_tokenizer, jobs, stage1_seconds, stage2_seconds)
        return output if return_dict else {"role": "assistant", "content": output.answer}

    # -----------------------------------------------------------------------------------------
    # Options and inputs
    # -----------------------------------------------------------------------------------------

    def _options(
        self,
        *,
        max_new_tokens,
        reasoning_effort=None,
        answer_reserve_tokens=None,
        description_mode=None,
        multi_image_mode="each",
        vision_prompt=None,
        description_max_new_tokens=None,
        vision_generation_kwargs=None,
        max_image_pixels=None,
        max_image_bytes=50 * 1024 * 1024,
        use_description_cache=True,
        seed=None,
        generation_kwargs=None,
    ) -> _Options:
        config = self.config
        check_positive_int("max_new_tokens", max_new_tokens)

        effort = config.reasoning_effort if reasoning_effort is None else reasoning_effort
        if effort not in REASONING_EFFORTS:
            raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {effort!r}.")
        reserve = config.answer_reserve_tokens if answer_reserve_tokens is None else answer_reserve_tokens
        check_non_negative_int("answer_reserve_tokens", reserve)

        mode = config.description_mode if description_mode is None else description_mode
        if mode not in DESCRIPTION_MODES:
            raise ValueError(f"description_mode must be one of {DESCRIPTION_MODES}, got {mode!r}.")
        if multi_image_mode not in ("each", "together"):
            raise ValueError(f"multi_image_mode must be 'each' or 'together', got {multi_image_mode!r}.")

        template = vision_prompt if vision_prompt is not None else (
            config.vision_prompt if mode == "question" else config.generic_vision_prompt
        )
        if not isinstance(template, str) or not template.strip():
            raise ValueError(f"vision_prompt must be a non-empty string, got {template!r}.")

        budget = config.description_max_new_tokens if description_max_new_tokens is None else description_max_new_tokens
        check_positive_int("description_max_new_tokens", budget)
        pixels = config.max_image_pixels if max_image_pixels is None else max_image_pixels
        if pixels is not None:
            check_positive_int("max_image_pixels", pixels)
        check_positive_int("max_image_bytes", max_image_bytes)

        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r:.80}).")

        vision_generation = dict(config.description_generation or {})
        if vision_generation_kwargs is not None:
            if not isinstance(vision_generation_kwargs, dict):
                raise TypeError(f"vision_generation_kwargs must be a dict, got {type(vision_generation_kwargs).__name__}.")
            vision_generation.update(vision_generation_kwargs)

        generation_kwargs = dict(generation_kwargs or {})
        reserved = sorted(_RESERVED_KWARGS & set(generation_kwargs))
        if reserved:
            raise TypeError(f"generate() got arguments it builds itself: {reserved}. Pass images and text_prompt instead.")

        base = generation_kwargs.pop("generation_config", None)
        if base is not None and not isinstance(base, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(base).__name__}.")

        # Settings that GenerationConfig defines go into the stage-2 config. The rest (logits_processor,
        # stopping_criteria, ...) must be named arguments of `generate` and are passed to it as they are.
        known = GenerationConfig()
        overrides = {key: generation_kwargs.pop(key) for key in list(generation_kwargs) if hasattr(known, key)}
        _check_generation_settings(overrides, vision_generation, known)
        accepted = set(inspect.signature(GenerationMixin.generate).parameters) - {"self", "kwargs", "inputs"}
        unknown = sorted(set(generation_kwargs) - accepted)
        if unknown:
            names = set(inspect.signature(UnifiedMultimodalModel.generate).parameters) | accepted | set(vars(known))
            hints = {name: difflib.get_close_matches(name, names, n=1) for name in unknown}
            hint_text = "; ".join(f"did you mean {match[0]!r} for {name!r}?" for name, match in hints.items() if match)
            raise TypeError(
                f"generate() got unknown stage-2 arguments {unknown}: they are neither GenerationConfig settings nor "
                f"arguments of transformers' generate. Check their spelling{'; ' + hint_text if hint_text else '.'}"
            )

        return _Options(
            max_new_tokens=max_new_tokens, reasoning_effort=effort, answer_reserve_tokens=reserve,
            description_mode=mode,
            multi_image_mode=multi_image_mode, vision_prompt=template, description_max_new_tokens=budget,
            vision_generation=vision_generation, max_image_pixels=pixels, max_image_bytes=max_image_bytes,
            use_cache=bool(use_description_cache), seed=seed, generation_overrides=overrides,
            generation_kwargs=generation_kwargs, base_generation_config=copy.deepcopy(base),
        )  # fmt: skip

    def _resolve_processors(self, vlm_processor, llm_tokenizer, requests: list[Request]):
        needs_vision = any(request.images or request.video is not None for request in requests)
        if vlm_processor is None and needs_vision:
            vlm_processor = self.get_vlm_processor()
        if llm_tokenizer is None:
            llm_tokenizer = self.get_llm_tokenizer()
        if vlm_processor is not None and needs_vision:
            _check_vlm_processor(vlm_processor, self.config)
        if not callable(getattr(llm_tokenizer, "get_vocab", None)):
            raise TypeError(
                f"llm_tokenizer must be the gpt-oss tokenizer (AutoTokenizer of llm_tokenizer/), got "
                f"{type(llm_tokenizer).__name__}."
            )
        HarmonyTokenIds.from_tokenizer(llm_tokenizer)
        if len(llm_tokenizer) > self.config.llm_config.vocab_size:
            raise ValueError(
                f"llm_tokenizer has {len(llm_tokenizer)} tokens but the LLM's vocabulary has "
                f"{self.config.llm_config.vocab_size}: pass the folder's llm_tokenizer/."
            )
        return vlm_processor, llm_tokenizer

    # -----------------------------------------------------------------------------------------
    # Stage 1: descriptions
    # -----------------------------------------------------------------------------------------

    def _description_jobs(self, requests: list[Request], options: _Options, processor) -> list[DescriptionJob]:
        max_pixels = options.max_image_pixels or _processor_max_pixels(processor)
        settings = {"budget": options.description_max_new_tokens, "generation": options.vision_generation,
                    "pixels": max_pixels}  # fmt: skip
        return description_jobs(
            requests, vision_prompt=options.vision_prompt, description_mode=options.description_mode,
            multi_image_mode=options.multi_image_mode, max_pixels=max_pixels, max_bytes=options.max_image_bytes,
            settings=settings,
        )  # fmt: skip

    def _describe(self, jobs: list[DescriptionJob], processor, options: _Options) -> None:
        pending = []
        for job in jobs:
            cached = self.description_cache.get(job.key) if options.use_cache else None
            if cached is not None:
                job.text, job.cached = cached, True
            else:
                pending.append(job)
        # Equal images with equal prompts in one call are described once.
        unique: dict[str, DescriptionJob] = {}
        for job in pending:
            unique.setdefault(job.key, job)
        image_jobs = [job for job in unique.values() if job.video is None]
        video_jobs = [job for job in unique.values() if job.video is not None]

        with _seeded(options.seed, self.vlm):
            if image_jobs:
                self._run_vlm(image_jobs, processor, options)
            for job in video_jobs:
                self._run_vlm([job], processor, options)

        for job in pending:
            source = unique[job.key]
            if source is not job:
                job.text = source.text
            elif options.use_cache:
                self.description_cache.put(job.key, job.text)

    def _run_vlm(self, jobs: list[DescriptionJob], processor, options: _Options) -> None:
        texts = []
        for job in jobs:
            messages = build_vision_messages(job.prompt, images=len(job.images), videos=int(job.video is not None))
            texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

        call = {"text": texts, "padding": True, "padding_side": "left", "return_tensors": "pt"}
        images = [image for job in jobs for image in job.images]
        if images:
            call["images"] = images
            if options.max_image_pixels is not None:
                call["size"] = _processor_size(processor, options.max_image_pixels)
        if jobs[0].video is not None:
            call.update(_video_call(jobs[0].video, processor))
        inputs = processor(**call).to(_input_device(self.vlm))

        generation_config = _generation_config(self.vlm, options.vision_generation, options.description_max_new_tokens)
        output = self.vlm.generate(**inputs, generation_config=generation_config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        stops = set(_as_list(generation_config.eos_token_id))
        for job, row in zip(jobs, new_tokens.tolist()):
            row = _cut_at_stop(row, stops)
            job.tokens = len(row)
            job.text = processor.tokenizer.decode(row, skip_special_tokens=True).strip()

    # -----------------------------------------------------------------------------------------
    # Stage 2: answers
    # -----------------------------------------------------------------------------------------

    def _answer(self, conversations: list[list[dict]], tokenizer, options: _Options, streamer) -> list[_Reply]:
        harmony = HarmonyTokenIds.from_tokenizer(tokenizer)
        prompts = [self._render_prompt(conversation, tokenizer, options) for conversation in conversations]

        budget = options.max_new_tokens
        reserve = min(options.answer_reserve_tokens, budget // 2)
        generation_config = _generation_config(
            self.llm, options.generation_overrides, budget - reserve, options.base_generation_config
        )
        stops = set(_as_list(generation_config.eos_token_id))
        adapter = None
        if streamer is not None:
            adapter = _FinalChannelStreamer(streamer, HarmonyStreamParser(harmony, _decoder(tokenizer)))

        with _seeded(options.seed, self.llm):
            generated = self._run_llm(prompts, tokenizer, generation_config, options, adapter)
            replies = [_Reply(ids=_cut_at_stop(row, stops, keep_stop=True), prompt_tokens=len(prompt))
                       for row, prompt in zip(generated, prompts)]  # fmt: skip

            # A reply that stopped on the budget continues within the reserve. Inside its reasoning, the
            # final channel is opened for it first. Inside a final answer, the answer simply goes on.
            # A tool call is handled like reasoning, because this pipeline offers the model no tools.
            has_final = {}
            for index, reply in enumerate(replies):
                parse = parse_reply(reply.ids, harmony, _decoder(tokenizer))
                if reserve > 0 and (parse.stop is None or (parse.stop == "call" and not parse.has_final)):
                    has_final[index] = parse.has_final
            rescue = list(has_final)
            if rescue:
                prefix = tokenizer.encode(FINAL_CHANNEL_PREFIX, add_special_tokens=False)
                continued_prompts = []
                for index in rescue:
                    reply = replies[index]
                    if not has_final[index]:
                        if reply.ids and reply.ids[-1] == harmony.call:
                            reply.ids = reply.ids[:-1]
                        reply.ids = reply.ids + prefix
                        reply.forced_final = True
                    continued_prompts.append(prompts[index] + reply.ids)
                if adapter is not None:
                    adapter.new_pass()
                    if replies[rescue[0]].forced_final:
                        adapter.parser.start_final()
                continuation = _generation_config(
                    self.llm, options.generation_overrides, reserve, options.base_generation_config
                )
                more = self._run_llm(continued_prompts, tokenizer, continuation, options, adapter)
                for index, row in zip(rescue, more):
                    replies[index].ids = replies[index].ids + _cut_at_stop(row, stops, keep_stop=True)
        if adapter is not None:
            adapter.finish()
        return replies

    def _render_prompt(self, conversation: list[dict], tokenizer, options: _Options) -> list[int]:
        text = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False, reasoning_effort=options.reasoning_effort
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
        limit = self.config.max_context_tokens or self.config.llm_config.max_position_embeddings
        if len(ids) + options.max_new_tokens > limit:
            raise ValueError(
                f"The stage-2 prompt has {len(ids)} tokens and max_new_tokens is {options.max_new_tokens}, over the "
                f"LLM's context of {limit} tokens. Shorten the prompt, lower description_max_new_tokens or "
                "max_new_tokens, or send fewer images per prompt."
            )
        return ids

    def _run_llm(self, prompts: list[list[int]], tokenizer, generation_config, options: _Options, adapter):
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else tokenizer.pad_token_id
        width = max(len(prompt) for prompt in prompts)
        device = _input_device(self.llm)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        output = self.llm.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=generation_config,
            streamer=adapter,
            **options.generation_kwargs,
        )
        return output[:, width:].tolist()

    def _make_output(self, reply: _Reply, tokenizer, jobs, stage1_seconds: float, stage2_seconds: float):
        harmony = HarmonyTokenIds.from_tokenizer(tokenizer)
        decode = _decoder(tokenizer)
        parse = parse_reply(reply.ids, harmony, decode)
        answer = parse.final_text(decode)
        stop_reason = parse.stop or "max_new_tokens"
        if not answer:
            logger.warning(
                f"gpt-oss returned no final answer (stop: {stop_reason}, {len(reply.ids)} tokens generated); "
                "raise max_new_tokens or lower reasoning_effort."
            )
        header = len(tokenizer.encode(FINAL_CHANNEL_PREFIX, add_special_tokens=False)) if reply.forced_final else 0
        return UnifiedGenerationOutput(
            answer=answer,
            descriptions=[VisualDescription(job.label, job.text or "") for job in jobs],
            reasoning=parse.reasoning_text(decode),
            stop_reason=stop_reason,
            forced_final=reply.forced_final,
            description_tokens=sum(job.tokens for job in jobs if not job.cached),
            cached_descriptions=sum(job.cached for job in jobs),
            prompt_tokens=reply.prompt_tokens,
            reasoning_tokens=len(parse.reasoning_ids),
            answer_tokens=len(parse.final_ids),
            generated_tokens=len(reply.ids) - header,
            stage1_seconds=stage1_seconds,
            stage2_seconds=stage2_seconds,
            llm_output_ids=list(reply.ids),
        )


# ---------------------------------------------------------------------------------------------
# Generation helpers
# ---------------------------------------------------------------------------------------------


def _generation_config(
    model: PreTrainedModel, overrides: dict, max_new_tokens: int, base: GenerationConfig | None = None
) -> GenerationConfig:
    """Copy `base` (default: the model's generation config) and apply `overrides`; neither object changes."""
    config = copy.deepcopy(base if base is not None else model.generation_config)
    if not overrides.get("do_sample", config.do_sample):
        # Under greedy decoding the source configs' sampling settings only trigger warnings. They are set
        # to neutral values, not None, because `generate` fills None fields from the model's config again.
        for name, neutral in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 50)):
            if name not in overrides:
                setattr(config, name, neutral)
    config.update(**overrides)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    return config


class _seeded:
    """Seed torch's RNGs for the duration of a block and restore the previous state afterwards."""

    def __init__(self, seed: int | None, model: PreTrainedModel):
        self.seed = seed
        self._fork = None
        if seed is not None:
            devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
            self._fork = torch.random.fork_rng(devices=devices)

    def __enter__(self):
        if self._fork is not None:
            self._fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self._fork is not None:
            return self._fork.__exit__(*exc)
        return False


def _input_device(model: PreTrainedModel) -> torch.device:
    return model.get_input_embeddings().weight.device


def _decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _cut_at_stop(row: list[int], stops: set[int], keep_stop: bool = False) -> list[int]:
    for position, token in enumerate(row):
        if token in stops:
            return row[: position + 1] if keep_stop else row[:position]
    return row


def _processor_max_pixels(processor) -> int | None:
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    return size.get("longest_edge") or size.get("max_pixels")


def _processor_size(processor, max_pixels: int) -> dict:
    size = dict(getattr(processor.image_processor, "size", None) or {})
    # The minimum must stay below the maximum: Qwen's resize rounds up to reach the minimum.
    shortest = min(size.get("shortest_edge", 0) or 0, max_pixels // 2)
    return {"longest_edge": max_pixels, "shortest_edge": shortest}


def _video_call(clip, processor) -> dict:
    from transformers.video_utils import VideoMetadata

    # Qwen3-VL merges frames in groups of temporal_patch_size and rejects shorter clips, so a clip
    # whose length is not a multiple of it repeats its last frame, as a still image does.
    group = getattr(processor.video_processor, "temporal_patch_size", 1) or 1
    frames, indices = clip.frames, list(clip.frame_indices)
    missing = -len(frames) % group
    if missing:
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
        indices += [indices[-1]] * missing
    metadata = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=indices)
    call = {"videos": [frames], "video_metadata": [metadata], "do_sample_frames": False}
    if hasattr(processor.video_processor, "cap_pixels_per_frame"):
        # Cap each frame's pixels as Qwen's reference preprocessing does; transformers 5.23 warns until callers choose.
        call["cap_pixels_per_frame"] = True
    return call


def _check_generation_settings(stage2: dict, stage1: dict, known: GenerationConfig) -> None:
    """Reject token budgets set through generation settings, and stage-1 settings GenerationConfig lacks."""
    budget_keys = {"max_new_tokens", "max_length"}
    if budget_keys & set(stage2):
        raise ValueError(
            f"Set the stage-2 budget with the max_new_tokens argument of generate, not the generation setting "
            f"{sorted(budget_keys & set(stage2))}."
        )
    if budget_keys & set(stage1):
        raise ValueError(
            f"Set the stage-1 budget with description_max_new_tokens, not {sorted(budget_keys & set(stage1))} in "
            "vision_generation_kwargs."
        )
    # GenerationConfig.update skips names it does not define, so a misspelt stage-1 setting would be dropped silently.
    unknown = sorted(key for key in stage1 if not hasattr(known, key))
    if unknown:
        raise ValueError(
            f"vision_generation_kwargs or config.description_generation contain settings that GenerationConfig does "
            f"not define: {unknown}. Check their spelling."
        )
    check_sampling_settings(stage2, "the stage-2 settings of generate")
    check_sampling_settings(stage1, "vision_generation_kwargs or config.description_generation")


def _check_vlm_processor(processor, config: UnifiedConfig) -> None:
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise TypeError(
            f"vlm_processor must be the Qwen3-VL processor (AutoProcessor of vlm_processor/), got {type(processor).__name__}."
        )
    expected = config.vlm_config.image_token_id
    found = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    if found != expected:
        raise ValueError(
            f"vlm_processor maps <|image_pad|> to {found}, but the VLM expects {expected}: pass the processor from the "
            "folder's vlm_processor/."
        )
