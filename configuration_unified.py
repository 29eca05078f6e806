"""Configuration of UnifiedMultimodalModel: both sub-model configs plus the two-stage pipeline settings."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

try:
    from .unified_prompts import DEFAULT_DEVELOPER_PROMPT, DEFAULT_VISION_PROMPT, DESCRIPTION_MODES, GENERIC_VISION_PROMPT
except ImportError:  # imported as a top-level module, with the model folder on sys.path
    from unified_prompts import DEFAULT_DEVELOPER_PROMPT, DEFAULT_VISION_PROMPT, DESCRIPTION_MODES, GENERIC_VISION_PROMPT

REASONING_EFFORTS = ("low", "medium", "high")


def _as_config(value, name: str) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        model_type = value.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{name} has model_type {model_type!r}, which this transformers version does not know.")
        fields = {key: item for key, item in value.items() if key != "model_type"}
        return CONFIG_MAPPING[model_type](**fields)
    raise TypeError(f"{name} must be a PretrainedConfig or a dict, got {type(value).__name__}.")


class UnifiedConfig(PretrainedConfig):
    r"""
    Configuration of a two-stage model: a vision-language model (stage 1) writes text about the
    images, and a language model (stage 2) answers the question from that text.

    Args:
        vlm_config (`dict` or `PretrainedConfig`): config of the vision-language model (Qwen3-VL).
        llm_config (`dict` or `PretrainedConfig`): config of the language model (gpt-oss), with its
            `quantization_config` as stored in the checkpoint.
        vlm_subfolder, llm_subfolder, vlm_processor_subfolder, llm_tokenizer_subfolder (`str`):
            sub-folders of the model folder that hold each part.
        vision_prompt (`str`): stage-1 prompt for question-aware descriptions; `{question}` and
            `{visual}` ("image", "images" or "video") are filled in.
        generic_vision_prompt (`str`): stage-1 prompt when `description_mode="generic"`.
        description_mode (`str`): "question" (descriptions written with the question in view) or
            "generic" (one description per image, reusable for any question).
        description_max_new_tokens (`int`): token budget of one stage-1 description.
        description_generation (`dict`): stage-1 generation settings laid over the VLM's own
            generation config; greedy by default.
        developer_prompt (`str`): stage-2 developer instructions when images were described.
        reasoning_effort (`str`): default gpt-oss reasoning effort, "low", "medium" or "high".
        answer_reserve_tokens (`int`): tokens kept back from `max_new_tokens` so that a reply whose
            reasoning fills the rest can still be closed with a final answer.
        max_image_pixels (`int`, *optional*): pixel budget per image; None uses the processor's.
        description_cache_size (`int`): descriptions kept in the LRU cache; 0 disables it.
        max_context_tokens (`int`, *optional*): stage-2 prompt plus `max_new_tokens` must fit in it;
            None uses the LLM's `max_position_embeddings`.
    """

    model_type = "unified_vlm_llm"
    sub_configs = {"vlm_config": AutoConfig, "llm_config": AutoConfig}

    def __init__(
        self,
        vlm_config: dict | PretrainedConfig | None = None,
        llm_config: dict | PretrainedConfig | None = None,
        vlm_subfolder: str = "vlm",
        llm_subfolder: str = "llm",
        vlm_processor_subfolder: str = "vlm_processor",
        llm_tokenizer_subfolder: str = "llm_tokenizer",
        vision_prompt: str = DEFAULT_VISION_PROMPT,
        generic_vision_prompt: str = GENERIC_VISION_PROMPT,
        description_mode: str = "question",
        description_max_new_tokens: int = 768,
        description_generation: dict | None = None,
        developer_prompt: str = DEFAULT_DEVELOPER_PROMPT,
        reasoning_effort: str = "medium",
        answer_reserve_tokens: int = 256,
        max_image_pixels: int | None = None,
        description_cache_size: int = 128,
        max_context_tokens: int | None = None,
        **kwargs,
    ):
        if description_mode not in DESCRIPTION_MODES:
            raise ValueError(f"description_mode must be one of {DESCRIPTION_MODES}, got {description_mode!r}.")
        if reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}.")
        self.vlm_config = _as_config(vlm_config, "vlm_config")
        self.llm_config = _as_config(llm_config, "llm_config")
        self.vlm_subfolder = vlm_subfolder
        self.llm_subfolder = llm_subfolder
        self.vlm_processor_subfolder = vlm_processor_subfolder
        self.llm_tokenizer_subfolder = llm_tokenizer_subfolder
        self.vision_prompt = vision_prompt
        self.generic_vision_prompt = generic_vision_prompt
        self.description_mode = description_mode
        self.description_max_new_tokens = description_max_new_tokens
        self.description_generation = {"do_sample": False} if description_generation is None else description_generation
        self.developer_prompt = developer_prompt
        self.reasoning_effort = reasoning_effort
        self.answer_reserve_tokens = answer_reserve_tokens
        self.max_image_pixels = max_image_pixels
        self.description_cache_size = description_cache_size
        self.max_context_tokens = max_context_tokens
        super().__init__(**kwargs)
