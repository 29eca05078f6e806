"""Tests for unified_images: image and video inputs as users pass them.

Expected pixels come from Pillow or NumPy directly, never from the code under test. Files are real
photos from scikit-image and edge cases written by testbed.py. URLs go to a local ImageServer on
127.0.0.1.
"""

from __future__ import annotations

import base64
import logging
import math
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import testbed
import unified_images
from helpers import ImageServer
from unified_images import ImageLoadError, image_fingerprint, load_image, load_video, sample_frame_indices

# Seconds the ImageServer's /slow/ route waits before it responds.
SLOW_SECONDS = 3.0

VIDEO_FPS = 10
VIDEO_FRAMES = 20
VIDEO_SIZE = (160, 112)


def rgb_pixels(path: Path) -> np.ndarray:
    """Decode `path` with Pillow alone, as an H x W x 3 uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def composite_over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend uint8 `color` [H, W, 3] over white, weighted by uint8 `alpha` [H, W]."""
    weight = alpha[..., None].astype(np.float64) / 255.0
    return np.rint(color * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int32) - second.astype(np.int32)).max())


def mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int32) - second.astype(np.int32)).mean())


def data_url(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def served_folder(photos, tmp_path_factory) -> Path:
    """A folder with copies of the photos and a text file named notes.png."""
    folder = tmp_path_factory.mktemp("served")
    for path in photos.values():
        shutil.copy(path, folder / path.name)
    (folder / "notes.png").write_text("plain text under an image name\n")
    return folder


@pytest.fixture(scope="module")
def server(served_folder):
    with ImageServer(served_folder, slow_seconds=SLOW_SECONDS, huge_bytes=2 * 1024 * 1024) as image_server:
        yield image_server


class ListHandler(logging.Handler):
    """A logging handler that keeps WARNING and higher records in a list."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged_warnings():
    """Warnings logged by unified_images, taken from its own logger.

    The handler sits on that logger itself, so capture does not depend on propagation to the root
    logger. transformers/utils/logging.py turns propagation off for the `transformers` logger unless
    the CI variable is set.
    """
    handler = ListHandler()
    unified_images.logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        unified_images.logger.removeHandler(handler)


# ---------------------------------------------------------------------------------------------
# Input kinds
# ---------------------------------------------------------------------------------------------

INPUT_KINDS = {
    "pil_image": lambda path, base_url: Image.open(path),
    "str_path": lambda path, base_url: str(path),
    "pathlib_path": lambda path, base_url: path,
    "bytes": lambda path, base_url: path.read_bytes(),
    "data_url": lambda path, base_url: data_url(path),
    "http_url": lambda path, base_url: f"{base_url}/{path.name}",
    "numpy_hwc_uint8": lambda path, base_url: rgb_pixels(path),
    "numpy_hwc_float": lambda path, base_url: rgb_pixels(path).astype(np.float32) / 255.0,
    "torch_chw_uint8": lambda path, base_url: torch.from_numpy(rgb_pixels(path).copy()).permute(2, 0, 1),
    "torch_chw_float": lambda path, base_url: torch.from_numpy(rgb_pixels(path).copy()).permute(2, 0, 1) / 255.0,
}


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_input_kind_same_pixels(photos, server, photo, kind):
    path = photos[photo]
    expected = rgb_pixels(path)

    image = load_image(INPUT_KINDS[kind](path, server.url))

    assert image.mode == "RGB"
    assert image.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(image), expected)


GRAY_KINDS = {
    "numpy_hw": lambda gray: gray,
    "numpy_hw1": lambda gray: gray[..., None],
    "numpy_hw_float": lambda gray: gray.astype(np.float64) / 255.0,
    "numpy_hw_uint16": lambda gray: gray.astype(np.uint16) * 257,
    "numpy_hw_uint16_big_endian": lambda gray: (gray.astype(np.uint16) * 257).astype(">u2"),
    "torch_hw": lambda gray: torch.from_numpy(gray.copy()),
    "torch_1hw": lambda gray: torch.from_numpy(gray.copy())[None],
}


@pytest.mark.parametrize("kind", sorted(GRAY_KINDS))
def test_grayscale_array_to_rgb(photos, kind):
    with Image.open(photos["page"]) as page:
        assert page.mode == "L"
        gray = np.asarray(page)

    image = load_image(GRAY_KINDS[kind](gray))

    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), gray_to_rgb(gray))


def test_home_path_expanded(photos, tmp_path, monkeypatch):
    shutil.copy(photos["astronaut"], tmp_path / "astronaut.png")
    monkeypatch.setenv("HOME", str(tmp_path))

    image = load_image("~/astronaut.png")

    assert np.array_equal(np.asarray(image), rgb_pixels(photos["astronaut"]))


# ---------------------------------------------------------------------------------------------
# Modes, EXIF orientation, animation
# ---------------------------------------------------------------------------------------------


def expected_gray(image: Image.Image) -> np.ndarray:
    return gray_to_rgb(np.asarray(image))


def expected_gray_alpha(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    return composite_over_white(gray_to_rgb(pixels[..., 0]), pixels[..., 1])


def expected_rgba(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    return composite_over_white(pixels[..., :3], pixels[..., 3])


def expected_palette(image: Image.Image) -> np.ndarray:
    indices = np.asarray(image)
    transparent_index = image.info["transparency"]
    assert (indices == transparent_index).any(), "the palette case needs some transparent pixels"
    palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    alpha = np.where(indices == transparent_index, 0, 255).astype(np.uint8)
    return composite_over_white(palette[indices], alpha)


def expected_cmyk(image: Image.Image) -> np.ndarray:
    # CMYK to RGB without a color profile: each channel is (255 - ink) scaled by (255 - black) / 255.
    cmyk = np.asarray(image).astype(np.float64)
    rgb = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0
    return np.rint(rgb).astype(np.uint8)


def expected_gray16(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    assert values.dtype == np.uint16
    return gray_to_rgb((values >> 8).astype(np.uint8))


def expected_unchanged(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# edge image name, mode of the stored file, expected RGB pixels, maximum difference per channel
MODE_CASES = [
    ("gray", "L", expected_gray, 0),
    ("gray_alpha", "LA", expected_gray_alpha, 1),
    ("palette", "P", expected_palette, 1),
    ("rgba", "RGBA", expected_rgba, 1),
    ("cmyk", "CMYK", expected_cmyk, 1),
    ("gray16", "I;16", expected_gray16, 0),
    ("one_pixel", "RGB", expected_unchanged, 0),
]


@pytest.mark.parametrize(("name", "mode", "expected_pixels", "tolerance"), MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_mode_to_rgb(edge_images, name, mode, expected_pixels, tolerance):
    with Image.open(edge_images[name]) as stored:
        assert stored.mode == mode
        expected = expected_pixels(stored)

    image = load_image(edge_images[name])

    assert image.mode == "RGB"
    assert image.size == (expected.shape[1], expected.shape[0])
    assert max_difference(np.asarray(image), expected) <= tolerance


def test_cmyk_near_rgb_original(edge_images):
    image = load_image(edge_images["cmyk"])

    # Both files are JPEGs (quality 95) of the same picture, so only compression noise separates them.
    assert mean_difference(np.asarray(image), rgb_pixels(edge_images["upright"])) < 6.0


@pytest.mark.parametrize("kind", ["file", "numpy_rgba"])
def test_rgba_over_white(edge_images, kind):
    with Image.open(edge_images["rgba"]) as stored:
        pixels = np.asarray(stored)
    half = pixels.shape[1] // 2
    assert (pixels[:, :half, 3] == 0).all()
    assert (pixels[:, half:, 3] == 255).all()

    image = load_image(edge_images["rgba"] if kind == "file" else pixels)
    loaded = np.asarray(image)

    assert (loaded[:, :half] == 255).all()
    assert np.array_equal(loaded[:, half:], pixels[:, half:, :3])


def test_exif_orientation_applied(edge_images):
    upright = rgb_pixels(edge_images["upright"])
    with Image.open(edge_images["exif_rotated"]) as stored:
        stored_size = stored.size

    image = load_image(edge_images["exif_rotated"])
    loaded = np.asarray(image)

    assert image.size == (upright.shape[1], upright.shape[0])
    assert image.size != stored_size
    # Two JPEG encodings (quality 95) of one picture differ by compression noise only.
    assert mean_difference(loaded, upright) < 4.0
    # A picture turned the wrong way round is far off, so the bound above rejects it.
    assert mean_difference(loaded, upright[::-1, ::-1]) > 20.0


def test_animated_first_frame(edge_images, tmp_path, logged_warnings):
    # A file of this test's own, because the warning is logged once per input name in a session.
    path = tmp_path / "animated.gif"
    shutil.copy(edge_images["animated"], path)
    with Image.open(path) as stored:
        frame_count = stored.n_frames
        first = np.asarray(stored.convert("RGB"))
        stored.seek(1)
        second = np.asarray(stored.convert("RGB"))
    assert not np.array_equal(first, second)

    images = [load_image(path), load_image(path)]

    assert np.array_equal(np.asarray(images[0]), first)
    assert np.array_equal(np.asarray(images[1]), first)
    assert len(logged_warnings) == 1
    assert f"{frame_count} frames" in logged_warnings[0].getMessage()
    assert str(path) in logged_warnings[0].getMessage()


def test_animated_pil_seeked(edge_images):
    with Image.open(edge_images["animated"]) as stored:
        first = np.asarray(stored.convert("RGB"))
        stored.seek(stored.n_frames - 1)

        image = load_image(stored)

    assert np.array_equal(np.asarray(image), first)


# ---------------------------------------------------------------------------------------------
# Pixel budget
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_photo(photos, tmp_path_factory) -> Path:
    """A JPEG of about 50 megapixels, upscaled from the chelsea photo."""
    return testbed.write_large_photo(tmp_path_factory.mktemp("large") / "large.jpg", photos["chelsea"])


@pytest.mark.parametrize("max_pixels", [1_000_000, 200_000])
def test_max_pixels_downscales(large_photo, photos, max_pixels):
    with Image.open(large_photo) as stored:
        width, height = stored.size
    assert width * height > 40_000_000

    image = load_image(large_photo, max_pixels=max_pixels)

    assert image.width * image.height <= max_pixels
    # Rounding each side down to whole pixels loses well under 1% of the budget.
    assert image.width * image.height >= 0.99 * max_pixels
    assert abs(image.width / image.height - width / height) / (width / height) < 0.01
    # Still the photo: close to the original scaled straight to the same size.
    with Image.open(photos["chelsea"]) as original:
        direct = np.asarray(original.convert("RGB").resize(image.size, Image.Resampling.BICUBIC))
    assert mean_difference(np.asarray(image), direct) < 10.0


@pytest.mark.parametrize("max_pixels", [512 * 512, 10_000_000])
def test_max_pixels_keeps_small(photos, max_pixels):
    expected = rgb_pixels(photos["astronaut"])
    assert expected.shape[0] * expected.shape[1] <= max_pixels

    image = load_image(photos["astronaut"], max_pixels=max_pixels)

    assert image.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(image), expected)


def test_max_pixels_one_below(photos):
    with Image.open(photos["astronaut"]) as stored:
        budget = stored.width * stored.height - 1

    image = load_image(photos["astronaut"], max_pixels=budget)

    assert image.width * image.height <= budget
    assert image.width == image.height


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

# edge image name, words the message must contain besides the input's name
BROKEN_FILES = [
    ("empty", ["0 bytes"]),
    ("not_an_image", []),
    ("truncated", ["truncated"]),
    ("bomb", ["decompression bomb"]),
]


@pytest.mark.parametrize(("name", "words"), BROKEN_FILES, ids=[c[0] for c in BROKEN_FILES])
def test_broken_file_path(edge_images, name, words):
    path = edge_images[name]

    with pytest.raises(ImageLoadError) as caught:
        load_image(path)

    assert str(path) in str(caught.value)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(("name", "words"), BROKEN_FILES, ids=[c[0] for c in BROKEN_FILES])
def test_broken_file_bytes(edge_images, name, words):
    data = edge_images[name].read_bytes()

    with pytest.raises(ImageLoadError) as caught:
        load_image(data)

    assert f"<{len(data)} bytes>" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_truncated_pil_image(edge_images):
    with Image.open(edge_images["truncated"]) as lazy:
        with pytest.raises(ImageLoadError) as caught:
            load_image(lazy)

    assert "PIL image" in str(caught.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.png"

    with pytest.raises(ImageLoadError) as caught:
        load_image(path)

    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_image_load_error_is_value_error():
    assert issubclass(ImageLoadError, ValueError)


# case id, input, text the message must contain
BAD_VALUES = [
    ("zero_height", np.zeros((0, 5, 3), dtype=np.uint8), "(0, 5, 3)"),
    ("zero_width", np.zeros((4, 0), dtype=np.uint8), "(4, 0)"),
    ("nan_float", np.full((4, 4, 3), np.nan, dtype=np.float32), "(4, 4, 3)"),
    ("inf_float", np.full((4, 4), np.inf, dtype=np.float64), "(4, 4)"),
    ("negative_int", np.full((4, 4), -1, dtype=np.int32), "int32"),
    ("four_dims", np.zeros((2, 4, 4, 3), dtype=np.uint8), "(2, 4, 4, 3)"),
    ("two_channels", np.zeros((4, 4, 2), dtype=np.uint8), "(4, 4, 2)"),
    ("aspect_300", np.zeros((1, 300), dtype=np.uint8), "300x1"),
    ("aspect_200_tall", np.zeros((400, 2, 3), dtype=np.uint8), "2x400"),
    ("tensor_5x5x5", torch.zeros(5, 5, 5), "(5, 5, 5)"),
    ("tensor_hwc", torch.zeros(8, 8, 3, dtype=torch.uint8), "(8, 8, 3)"),
]


@pytest.mark.parametrize(("value", "text"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_array(value, text):
    with pytest.raises(ImageLoadError) as caught:
        load_image(value)

    assert text in str(caught.value)


def test_aspect_just_under_limit():
    image = load_image(np.zeros((1, 199), dtype=np.uint8))

    assert image.size == (199, 1)


@pytest.mark.parametrize(
    ("value", "text"), [(object(), "object"), (5, "int"), (None, "NoneType"), ([1, 2], "list")], ids=str
)
def test_unsupported_type(value, text):
    with pytest.raises(TypeError) as caught:
        load_image(value)

    assert text in str(caught.value)


@pytest.mark.parametrize("kind", ["path", "pil_image", "numpy"])
def test_pixel_limit(tmp_path, monkeypatch, kind):
    # 150 x 100 = 15,000 pixels is between Pillow's limit and twice it, where Pillow only warns.
    pixels = np.full((100, 150, 3), 128, dtype=np.uint8)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    value = {"path": path, "pil_image": Image.fromarray(pixels), "numpy": pixels}[kind]

    with pytest.raises(ImageLoadError) as caught:
        load_image(value)

    assert "MAX_IMAGE_PIXELS" in str(caught.value)


# case id, URL (a path on the ImageServer when it starts with "/"), load_image options, words in the message
BAD_URLS = [
    ("http_404", "/status/404", {}, ["404"]),
    ("http_500", "/status/500", {}, ["500"]),
    ("missing_on_server", "/absent.png", {}, ["404"]),
    ("not_an_image", "/notes.png", {}, []),
    ("sent_over_max_bytes", "/huge", {"max_bytes": 1000}, ["1000"]),
    ("declared_over_max_bytes", "/astronaut.png", {"max_bytes": 1000}, ["1000"]),
    ("ftp_scheme", "ftp://127.0.0.1/x.png", {}, ["ftp"]),
    ("file_scheme", "file:///etc/hostname", {}, ["file"]),
    ("data_invalid_base64", "data:image/png;base64,!!not base64!!", {}, ["base64"]),
    ("data_not_base64", "data:image/png,plain", {}, ["base64"]),
    ("data_not_an_image", "data:image/png;base64," + base64.b64encode(b"plain text").decode(), {}, []),
    ("data_empty", "data:image/png;base64,", {}, ["0 bytes"]),
]


@pytest.mark.parametrize(("url", "options", "words"), [c[1:] for c in BAD_URLS], ids=[c[0] for c in BAD_URLS])
def test_bad_url(server, url, options, words):
    if url.startswith("/"):
        url = server.url + url

    with pytest.raises(ImageLoadError) as caught:
        load_image(url, **options)

    assert url in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_data_url_variants(photos):
    path = photos["astronaut"]
    expected = np.asarray(Image.open(path).convert("RGB"))
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    wrapped = "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    for url in (f"DATA:image/png;BASE64,{payload}", f"data:image/png;base64,{wrapped}"):
        assert np.array_equal(np.asarray(load_image(url)), expected)


def test_url_timeout(server):
    url = f"{server.url}/slow/astronaut.png"

    started = time.monotonic()
    with pytest.raises(ImageLoadError) as caught:
        load_image(url, timeout=0.5)
    elapsed = time.monotonic() - started

    assert url in str(caught.value)
    assert elapsed < SLOW_SECONDS - 0.5


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------


def test_fingerprint_same_pixels(photos):
    pixels = rgb_pixels(photos["astronaut"])

    from_path = image_fingerprint(load_image(photos["astronaut"]))
    from_pil = image_fingerprint(load_image(Image.fromarray(pixels.copy())))
    from_numpy = image_fingerprint(load_image(pixels))

    assert from_path == from_pil
    assert from_path == from_numpy


def test_fingerprint_one_pixel_changed(photos):
    pixels = rgb_pixels(photos["astronaut"])
    changed = pixels.copy()
    changed[10, 20, 1] ^= 1

    assert image_fingerprint(load_image(pixels)) != image_fingerprint(load_image(changed))


def test_fingerprint_same_bytes_other_shape():
    values = np.arange(2 * 3 * 3, dtype=np.uint8)

    wide = Image.fromarray(values.reshape(2, 3, 3))
    tall = Image.fromarray(values.reshape(3, 2, 3))

    assert wide.tobytes() == tall.tobytes()
    assert image_fingerprint(wide) != image_fingerprint(tall)


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(photos, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """An MPEG-4 file of VIDEO_FRAMES frames at VIDEO_FPS, and the frames it was encoded from.

    Frame i is the chelsea photo shifted right by 8 * i pixels, so every frame differs from the others.
    """
    with Image.open(photos["chelsea"]) as photo:
        base = np.asarray(photo.convert("RGB").resize(VIDEO_SIZE))
    sources = [np.roll(base, 8 * index, axis=1) for index in range(VIDEO_FRAMES)]

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for pixels in sources:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path, sources


def nearest_source(frame: np.ndarray, sources: list[np.ndarray]) -> int:
    return int(np.argmin([mean_difference(frame, source) for source in sources]))


def test_video_frame_list(photos):
    photo = rgb_pixels(photos["astronaut"])
    crops = [photo[48 * i : 48 * i + 48, 64 * i : 64 * i + 64] for i in range(4)]
    frames = [Image.fromarray(crop) if i % 2 == 0 else crop for i, crop in enumerate(crops)]

    clip = load_video(frames, frames_fps=4.0)

    assert clip.frames.shape == (4, 48, 64, 3)
    assert clip.frames.dtype == np.uint8
    assert np.array_equal(clip.frames, np.stack(crops))
    assert clip.frame_indices == [0, 1, 2, 3]
    assert clip.total_frames == 4
    assert clip.fps == 4.0


def test_video_frame_list_resized(photos):
    photo = rgb_pixels(photos["astronaut"])
    frames = [photo[:48, :64], photo[:100, :80], Image.fromarray(photo[:20, :30])]

    clip = load_video(frames)

    assert clip.frames.shape == (3, 48, 64, 3)
    assert np.array_equal(clip.frames[0], photo[:48, :64])


@pytest.mark.parametrize("sample_fps", [2.0, 3.0, 5.0, 10.0, 20.0])
def test_video_file_sampling(video, sample_fps):
    path, sources = video
    # One sample every 1 / sample_fps seconds from t = 0, each taking the frame shown at that time.
    sample_count = math.ceil(VIDEO_FRAMES / VIDEO_FPS * sample_fps)
    expected = sorted({math.floor(k * VIDEO_FPS / sample_fps) for k in range(sample_count)})

    clip = load_video(path, sample_fps=sample_fps)

    assert clip.fps == pytest.approx(VIDEO_FPS)
    assert clip.total_frames == VIDEO_FRAMES
    assert clip.frame_indices == expected
    assert clip.frames.shape == (len(expected), VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    assert clip.frames.dtype == np.uint8
    assert [nearest_source(frame, sources) for frame in clip.frames] == expected


@pytest.mark.parametrize("max_frames", [1, 2, 3, 7, 19])
def test_video_max_frames(video, max_frames):
    path, sources = video

    clip = load_video(path, sample_fps=VIDEO_FPS, max_frames=max_frames)
    indices = clip.frame_indices
    gaps = np.diff(indices)

    assert len(indices) == max_frames
    assert clip.frames.shape[0] == max_frames
    assert all(0 <= index < VIDEO_FRAMES for index in indices)
    assert (gaps > 0).all()
    if max_frames > 1:
        assert indices[0] == 0
        assert indices[-1] == VIDEO_FRAMES - 1
        assert gaps.max() - gaps.min() <= 1
    assert [nearest_source(frame, sources) for frame in clip.frames] == indices


def test_video_max_pixels(video):
    path, _ = video

    clip = load_video(path, sample_fps=2.0, max_pixels=4_000)

    assert clip.frames.shape[1] * clip.frames.shape[2] <= 4_000


@pytest.mark.parametrize(("name", "value"), [("max_frames", 0), ("max_frames", -3), ("sample_fps", 0.0), ("sample_fps", -1.0)])
def test_video_invalid_option(video, name, value):
    path, _ = video

    with pytest.raises(ValueError) as caught:
        load_video(path, **{name: value})

    assert f"{name}={value}" in str(caught.value)


def test_video_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"

    with pytest.raises(ImageLoadError) as caught:
        load_video(path)

    assert str(path) in str(caught.value)
    assert "Check the path" in str(caught.value)


def test_video_not_a_video(edge_images):
    path = edge_images["not_an_image"]

    with pytest.raises(ImageLoadError) as caught:
        load_video(path)

    assert str(path) in str(caught.value)
    assert "list of images" in str(caught.value)


def test_video_empty_list():
    with pytest.raises(ImageLoadError) as caught:
        load_video([])

    assert "empty" in str(caught.value)


def test_video_unsupported_type():
    with pytest.raises(TypeError) as caught:
        load_video(5)

    assert "int" in str(caught.value)


@pytest.mark.parametrize(
    ("total", "fps", "sample_fps", "max_frames", "expected"),
    [
        (20, 10.0, 2.0, 64, [0, 5, 10, 15]),
        (20, 10.0, 20.0, 64, list(range(20))),
        (20, 10.0, 2.0, 2, [0, 15]),
        (20, 10.0, 2.0, 1, [0]),
        (3, 30.0, 2.0, 64, [0]),
    ],
)
def test_sample_frame_indices(total, fps, sample_fps, max_frames, expected):
    assert sample_frame_indices(total, fps, sample_fps, max_frames) == expected
