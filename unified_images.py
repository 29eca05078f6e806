"""Load images and videos from what users pass, as upright RGB pictures within a pixel budget.

Accepted images: a PIL image, a file path, an http(s) or data: URL, raw encoded bytes, a NumPy array
(H x W or H x W x C) or a torch tensor (C x H x W, or H x W). Videos: a file path (decoded with PyAV)
or a list of frames in any image form. Every failure raises `ImageLoadError` naming the input.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.utils import logging

logger = logging.get_logger(__name__)

URL_TIMEOUT_SECONDS = 20.0
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
# Qwen3-VL's processor rejects images whose long side is 200 or more times their short side.
MAX_ASPECT_RATIO = 200
ACCEPTED_IMAGE_TYPES = (
    "PIL.Image.Image, str or pathlib.Path (file path, http(s):// or data: URL), bytes, "
    "numpy.ndarray (H x W or H x W x C), torch.Tensor (C x H x W or H x W)"
)


class ImageLoadError(ValueError):
    """An image or video input could not be read or is unusable."""


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames [T, H, W, 3] uint8, with the indices they had in the source and its frame rate."""

    frames: np.ndarray
    fps: float
    frame_indices: list[int]
    total_frames: int


def describe_input(value) -> str:
    """Render a user's input briefly and safely for error messages."""
    if isinstance(value, (str, Path)):
        text = str(value)
        return repr(text if len(text) <= 120 else text[:100] + "...")
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} shape={tuple(shape)} dtype={getattr(value, 'dtype', '?')}>"
    if isinstance(value, Image.Image):
        return f"<PIL image {value.mode} {value.width}x{value.height}>"
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"<{type(value).__module__}.{type(value).__name__}: {text}>"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def load_image(
    value,
    *,
    max_pixels: int | None = None,
    timeout: float = URL_TIMEOUT_SECONDS,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Image.Image:
    """Return `value` as an upright RGB image, downscaled to at most `max_pixels` pixels.

    EXIF orientation is applied; transparent pixels are composited over white; 16-bit and float
    images are scaled to 8 bits. Animated images give their first frame, with a logged warning.
    Raises `ImageLoadError` (a ValueError) for unreadable data and `TypeError` for other objects.
    """
    image = _open_image(value, timeout=timeout, max_bytes=max_bytes)
    label = describe_input(value)
    try:
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"Could not decode image {label}: {error}. The file may be truncated or corrupt.") from error

    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"Image {label} has a zero side ({image.width}x{image.height}); pass a non-empty image.")
    ratio = max(image.width, image.height) / min(image.width, image.height)
    if ratio >= MAX_ASPECT_RATIO:
        raise ImageLoadError(
            f"Image {label} is {image.width}x{image.height}, an aspect ratio of {ratio:.0f}:1; the vision model "
            f"accepts less than {MAX_ASPECT_RATIO}:1. Crop or pad the image first."
        )
    if max_pixels is not None and image.width * image.height > max_pixels:
        image = _downscale(image, max_pixels)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency over white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_fingerprint(image: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixels: equal for equal content, whatever the source."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _open_image(value, *, timeout: float, max_bytes: int) -> Image.Image:
    if isinstance(value, Image.Image):
        _check_pixel_limit(value.width, value.height, describe_input(value))
        return _first_frame(value, describe_input(value), close=False)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if isinstance(value, memoryview):
            value = value.tobytes()
        return _decode(bytes(value), describe_input(value))
    if isinstance(value, (str, Path)):
        return _open_location(os.fspath(value), timeout=timeout, max_bytes=max_bytes)
    if isinstance(value, np.ndarray):
        return _from_array(value, describe_input(value))
    if _is_torch_tensor(value):
        return _from_tensor(value)
    raise TypeError(f"Unsupported image input {describe_input(value)}. Accepted: {ACCEPTED_IMAGE_TYPES}.")


def _open_location(location: str, *, timeout: float, max_bytes: int) -> Image.Image:
    label = describe_input(location)
    has_scheme = "://" in location or location[:5].lower() == "data:"
    scheme = urllib.parse.urlsplit(location).scheme.lower() if has_scheme else ""
    if scheme in ("http", "https"):
        return _decode(download(location, timeout=timeout, max_bytes=max_bytes), label)
    if scheme == "data":
        return _decode(_decode_data_url(location), label)
    if scheme:
        raise ImageLoadError(
            f"Unsupported URL scheme {scheme!r} in image {label}: use http://, https://, data: or a local file path."
        )
    path = Path(location).expanduser()
    if not path.is_file():
        raise ImageLoadError(f"Image file {label} was not found; check the path or pass a PIL image.")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"Image file {label} is empty (0 bytes).")
    failure = f"Could not read image file {label}"
    return _decode_source(path, label, failure=failure, hint=" Is it a complete image file?")


def download(url: str, *, timeout: float = URL_TIMEOUT_SECONDS, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """Fetch `url` (http or https) with a timeout and a size limit."""
    label = describe_input(url)
    request = urllib.request.Request(url, headers={"User-Agent": "unified-multimodal-model"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(
                    f"Image URL {label} declares {int(declared)} bytes, over the limit of {max_bytes}; "
                    "raise `max_image_bytes` if the source is trusted."
                )
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise ImageLoadError(f"Image URL {label} returned HTTP {error.code} {error.reason}.") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ImageLoadError(f"Could not download image URL {label} within {timeout} s: {reason}.") from error
    if len(data) > max_bytes:
        raise ImageLoadError(
            f"Image URL {label} sent more than {max_bytes} bytes; raise `max_image_bytes` if the source is trusted."
        )
    return data


def _decode_data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.lower().endswith(";base64"):
        raise ImageLoadError(f"Data URL {describe_input(url)} is not base64-encoded; use data:image/...;base64,<data>.")
    try:
        # Line breaks inside the payload are allowed (MIME wraps base64 at 76 characters).
        return base64.b64decode("".join(payload.split()), validate=True)
    except ValueError as error:
        raise ImageLoadError(f"Data URL {describe_input(url)} contains invalid base64: {error}.") from error


def _decode(data: bytes, label: str) -> Image.Image:
    if not data:
        raise ImageLoadError(f"Image {label} is empty (0 bytes).")
    return _decode_source(io.BytesIO(data), label, failure=f"Could not decode image {label}")


def _decode_source(source, label: str, *, failure: str, hint: str = "") -> Image.Image:
    """Open and decode an image from a path or a file object, under the decompression-bomb guard.

    A decoding error raises ImageLoadError with the message "<failure>: <error>.<hint>".
    """
    try:
        with _bomb_guard(label):
            image = Image.open(source)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(f"{failure}: {error}.{hint}") from error
    return _first_frame(image, label, close=True)


def _first_frame(image: Image.Image, label: str, close: bool) -> Image.Image:
    """Return an animated image's first frame as a standalone copy and log that the rest is ignored.

    Single-frame images come back unchanged. The caller's own image keeps its current frame; an
    image this module opened (`close=True`) is closed, because Pillow keeps animated files open.
    """
    frames = getattr(image, "n_frames", 1)
    if frames <= 1:
        return image
    logger.warning_once(
        f"Image {label} has {frames} frames; only the first is described. "
        "Pass the frames as `videos=[frames]` to describe all of them."
    )
    current = image.tell()
    image.seek(0)
    first = image.copy()
    if close:
        image.close()
    else:
        image.seek(current)
    return first


class _bomb_guard:
    """Turn Pillow's decompression-bomb warning and error into ImageLoadError."""

    def __init__(self, label: str):
        self.label = label
        self._warnings = warnings.catch_warnings()

    def __enter__(self):
        self._warnings.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, kind, error, traceback):
        self._warnings.__exit__(kind, error, traceback)
        if kind is not None and issubclass(kind, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ImageLoadError(
                f"Image {self.label} is rejected as a possible decompression bomb: {error} "
                "Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted."
            ) from error
        return False


def _check_pixel_limit(width: int, height: int, label: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            f"Image {label} has {width * height} pixels, over Pillow's limit of {limit} "
            "(PIL.Image.MAX_IMAGE_PIXELS); raise that limit if the image is trusted."
        )


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"Image array {label} must be H x W, H x W x 3 or H x W x 4 (channels last); got shape {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(f"Image array {label} has a zero side; pass a non-empty image.")
    _check_pixel_limit(array.shape[1], array.shape[0], label)

    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"Image array {label} contains NaN or infinite values.")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype.kind == "u" and array.dtype.itemsize == 2:  # uint16 in either byte order
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise ImageLoadError(
                f"Image array {label} has dtype {array.dtype} with values outside 0-255; pass uint8, uint16 or floats in [0, 1]."
            )
        array = array.astype(np.uint8)
    # Pillow infers L, RGB or RGBA from the shape of a uint8 array.
    return Image.fromarray(np.ascontiguousarray(array))


def _is_torch_tensor(value) -> bool:
    module = type(value).__module__
    return module.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _from_tensor(tensor) -> Image.Image:
    label = describe_input(tensor)
    array = tensor.detach().cpu()
    if array.dtype.is_floating_point:
        array = array.float()
    array = array.numpy()
    if array.ndim == 3:
        if array.shape[0] not in (1, 3, 4):
            raise ImageLoadError(
                f"Image tensor {label} must be C x H x W with 1, 3 or 4 channels first (torchvision's layout); "
                f"got shape {tuple(array.shape)}."
            )
        array = np.moveaxis(array, 0, -1)
    return _from_array(array, label)


def _downscale(image: Image.Image, max_pixels: int) -> Image.Image:
    scale = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _to_8bit(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        peak = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        array = np.clip(np.nan_to_num(array) / peak * 255.0, 0, 255)
    else:
        # 16-bit PNGs decode to I;16 or I; both hold values up to 65535.
        array = np.clip(array.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(array.astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


def load_video(
    value, *, sample_fps: float = 2.0, max_frames: int = 64, frames_fps: float = 1.0, max_pixels: int | None = None
) -> VideoClip:
    """Decode a video file, or gather a list of frames, into a `VideoClip`.

    A file is sampled at `sample_fps` frames per second, keeping at most `max_frames` spread evenly.
    A list of frames is taken as it is and is assumed to play at `frames_fps`.
    Raises `ValueError` for a file when `sample_fps` is not positive or `max_frames` is below 1.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise ImageLoadError("The video frame list is empty; pass at least one frame.")
        frames = [load_image(frame, max_pixels=max_pixels) for frame in value]
        size = frames[0].size
        frames = [frame if frame.size == size else frame.resize(size, Image.Resampling.BICUBIC) for frame in frames]
        stacked = np.stack([np.asarray(frame) for frame in frames])
        return VideoClip(stacked, frames_fps, list(range(len(frames))), len(frames))
    if isinstance(value, (str, Path)):
        if sample_fps <= 0 or max_frames < 1:
            raise ValueError(
                f"sample_fps must be positive and max_frames at least 1, but got sample_fps={sample_fps} "
                f"and max_frames={max_frames}."
            )
        return _decode_video_file(Path(value), sample_fps, max_frames, max_pixels)
    raise TypeError(
        f"Unsupported video input {describe_input(value)}. Accepted: a video file path or a list of frames."
    )


def _decode_video_file(path: Path, sample_fps: float, max_frames: int, max_pixels: int | None) -> VideoClip:
    label = describe_input(str(path))
    if not path.is_file():
        raise ImageLoadError(f"Video file {label} was not found. Check the path, or pass the frames as a list of images.")
    try:
        import av
    except ImportError as error:
        raise ImportError("Reading video files needs PyAV: `pip install av`.") from error

    # Two passes keep memory bounded by the sampled frames: the first only counts packets, the
    # second decodes the file and converts just the frames that are kept.
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
            total = sum(1 for packet in container.demux(stream) if packet.size)
        indices = sample_frame_indices(total, fps, sample_fps, max_frames)
        wanted = set(indices)
        frames = {}
        with av.open(str(path)) as container:
            for position, frame in enumerate(container.decode(container.streams.video[0])):
                if position in wanted:
                    frames[position] = load_image(frame.to_image(), max_pixels=max_pixels)
                if position >= indices[-1]:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as error:
        raise ImageLoadError(
            f"Could not decode video file {label}: {error}. Check that it is a complete video, or pass its frames as "
            "a list of images."
        ) from error
    if not frames:
        raise ImageLoadError(f"Video file {label} contains no frames. Pass a video with at least one frame.")
    indices = [index for index in indices if index in frames]
    frames = [frames[index] for index in indices]
    return VideoClip(np.stack([np.asarray(f) for f in frames]), fps, indices, total)


def sample_frame_indices(total: int, fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Indices of the frames kept from a video of `total` frames: `sample_fps` per second, at most
    `max_frames`, spread from the first candidate to the last."""
    step = max(1.0, fps / sample_fps)
    indices = [int(i * step) for i in range(int(total / step) or 1)]
    if len(indices) > max_frames:
        # With max_frames=1 only the first candidate remains.
        span = max(max_frames - 1, 1)
        indices = [indices[round(i * (len(indices) - 1) / span)] for i in range(max_frames)]
    return indices
