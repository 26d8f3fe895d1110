"""ClipEncoder on a tiny random CLIP, and frame preprocessing against CLIPImageProcessor."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer, BertConfig, CLIPModel, CLIPTokenizer

from grdr_core.errors import InvalidInputError, ModelLoadError
from grdr_core.features import ClipEncoder, EncoderConfig, ImagePreprocessing, preprocess_frames
from grdr_core.testing.tiny_clip import PROJECTION_DIM, write_tiny_clip

# Features are float32 unit vectors. Summing the same values in another order
# (other batch sizes) changes them by a few ulp.
FEATURE_ATOL = 1e-5
# Pillow rounds to 8 bits after each of its two resize passes, and torch can differ
# by one level per pass. Two levels in normalised units are 2/255/std (smallest std).
PIXEL_ATOL = 2 / 255 / 0.26130258 + 1e-4
PIXEL_MEAN_ATOL = 1e-3
# Pixels within a couple of 8-bit levels must give nearly the same image features.
MIN_FEATURE_COSINE = 0.99


def _frames(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def _smooth_frame(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    channels = [127 + 120 * np.sin(cols / 17 + c) * np.cos(rows / 23) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def _pil_processor_class() -> type:
    pytest.importorskip("PIL", reason="the reference CLIPImageProcessor needs Pillow")
    # transformers 5 names the Pillow implementation CLIPImageProcessorPil. In
    # transformers 4, CLIPImageProcessor itself is the Pillow implementation.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> ClipEncoder:
    return ClipEncoder(EncoderConfig(model=str(tiny_clip_dir)))


# Tiny CLIP writer


def test_tiny_clip_loads_with_transformers(tiny_clip_dir):
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir, local_files_only=True)
    auto_tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir, local_files_only=True)
    config = json.loads((tiny_clip_dir / "preprocessor_config.json").read_text())

    assert model.config.projection_dim == PROJECTION_DIM
    assert tokenizer.model_max_length == model.config.text_config.max_position_embeddings
    assert auto_tokenizer("the cat")["input_ids"] == tokenizer("the cat")["input_ids"]
    assert tokenizer.eos_token_id == model.config.text_config.eos_token_id
    assert config["crop_size"]["height"] == model.config.vision_config.image_size


def test_tiny_clip_loads_image_processor(tiny_clip_dir):
    processor = _pil_processor_class().from_pretrained(tiny_clip_dir, local_files_only=True)
    assert processor.crop_size["height"] == 224
    assert processor.size["shortest_edge"] == 224


def test_tiny_clip_is_small(tiny_clip_dir):
    total_bytes = sum(path.stat().st_size for path in tiny_clip_dir.iterdir())
    assert total_bytes < 5 * 2**20


def test_tiny_clip_cli_writes_loadable_dir(tmp_path, encoder):
    directory = tmp_path / "cli_clip"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "grdr_core.testing.tiny_clip", str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert str(directory) in result.stdout
    assert "meaningless" in result.stdout
    loaded = ClipEncoder(EncoderConfig(model=str(directory)))
    assert loaded.checksum == encoder.checksum  # same default seed in another process


# Loading


def test_encoder_reports_model_shape(encoder, tiny_clip_dir):
    assert encoder.name == str(tiny_clip_dir)
    assert encoder.dim == PROJECTION_DIM
    assert encoder.image_size == 224
    assert encoder.short_side == 224


def test_checksum_stable_across_loads(encoder, tiny_clip_dir):
    reloaded = ClipEncoder(EncoderConfig(model=str(tiny_clip_dir)))

    assert encoder.checksum.startswith("sha256:")
    assert len(encoder.checksum) == len("sha256:") + 64
    assert reloaded.checksum == encoder.checksum


def test_checksum_differs_for_other_seed(encoder, tmp_path):
    other = ClipEncoder(EncoderConfig(model=str(write_tiny_clip(tmp_path / "seed1", seed=1))))
    assert other.checksum != encoder.checksum


def test_missing_dir_load_error(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError) as raised:
        ClipEncoder(EncoderConfig(model=str(missing)))

    message = str(raised.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "hub name" in message
    assert "--model" in message
    assert "grdr_core.testing.tiny_clip" in message


def test_uncached_hub_name_load_error():
    # local_files_only=True: the cache lookup fails at once, nothing is downloaded.
    name = "grdr-tests/no-such-clip-model"
    with pytest.raises(ModelLoadError) as raised:
        ClipEncoder(EncoderConfig(model=name))

    assert name in str(raised.value)
    assert "--model" in str(raised.value)


def test_dir_without_config_load_error(tmp_path):
    with pytest.raises(ModelLoadError) as raised:
        ClipEncoder(EncoderConfig(model=str(tmp_path)))
    assert "contains no config.json" in str(raised.value)


def test_non_clip_dir_load_error(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelLoadError) as raised:
        ClipEncoder(EncoderConfig(model=str(tmp_path)))

    assert str(tmp_path) in str(raised.value)
    assert "not a CLIP model" in str(raised.value)


@pytest.mark.parametrize(
    "removed",
    [
        ["preprocessor_config.json"],
        ["model.safetensors"],
        ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"],
    ],
    ids=["image_processor", "weights", "tokenizer"],
)
def test_incomplete_dir_load_error(tmp_path, removed):
    directory = write_tiny_clip(tmp_path / "clip", seed=0)
    for name in removed:
        (directory / name).unlink()

    with pytest.raises(ModelLoadError) as raised:
        ClipEncoder(EncoderConfig(model=str(directory)))
    assert str(directory) in str(raised.value)
    assert "--model" in str(raised.value)


def test_tokenizer_eos_mismatch_load_error(tmp_path):
    directory = write_tiny_clip(tmp_path / "clip", seed=0)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["eos_token_id"] = 7
    config_path.write_text(json.dumps(config))

    with pytest.raises(ModelLoadError, match="eos_token_id 7"):
        ClipEncoder(EncoderConfig(model=str(directory)))


def test_crop_size_mismatch_load_error(tmp_path):
    directory = write_tiny_clip(tmp_path / "clip", seed=0)
    config_path = directory / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["crop_size"] = {"height": 192, "width": 192}
    config_path.write_text(json.dumps(config))

    with pytest.raises(ModelLoadError, match="192x192"):
        ClipEncoder(EncoderConfig(model=str(directory)))


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_config_rejects_bad_batch_size(batch_size):
    with pytest.raises(InvalidInputError, match="batch size"):
        EncoderConfig(batch_size=batch_size)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", "meta"])
def test_config_rejects_bad_device(device):
    with pytest.raises(InvalidInputError, match="device"):
        EncoderConfig(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_raises(tiny_clip_dir):
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), device="cuda"))


# Frames and videos


def test_encode_frames_unit_float32(encoder):
    frames = _frames(np.random.default_rng(0), 5, 240, 320)
    features = encoder.encode_frames(frames)

    assert features.shape == (5, encoder.dim)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=FEATURE_ATOL)


def test_encode_frames_empty(encoder):
    features = encoder.encode_frames(np.zeros((0, 240, 320, 3), dtype=np.uint8))
    assert features.shape == (0, encoder.dim)
    assert features.dtype == np.float32


@pytest.mark.parametrize("shape", [(120, 160), (480, 640), (300, 200), (20, 30), (224, 224), (224, 400)])
def test_encode_frames_any_size(encoder, shape):
    frames = _frames(np.random.default_rng(1), 2, *shape)
    features = encoder.encode_frames(frames)

    assert features.shape == (2, encoder.dim)
    assert np.isfinite(features).all()


def test_encode_frames_read_only_input(encoder):
    frames = _frames(np.random.default_rng(2), 2, 120, 160)
    expected = encoder.encode_frames(frames)
    frames.setflags(write=False)
    np.testing.assert_allclose(encoder.encode_frames(frames), expected, atol=FEATURE_ATOL)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 64, 64, 3), dtype=np.float32),
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.zeros((2, 64, 64, 4), dtype=np.uint8),
        [np.zeros((64, 64, 3), dtype=np.uint8)],
    ],
    ids=["float32", "three_dims", "four_channels", "list"],
)
def test_encode_frames_rejects_bad_input(encoder, frames):
    with pytest.raises(InvalidInputError):
        encoder.encode_frames(frames)


def test_different_frames_differ(encoder):
    rng = np.random.default_rng(3)
    features = encoder.encode_frames(np.concatenate([_frames(rng, 1, 120, 160), _frames(rng, 1, 120, 160)]))
    assert float(features[0] @ features[1]) < 1 - 1e-4


def _videos(rng: np.random.Generator) -> list[np.ndarray]:
    # Different frame counts and sizes, so batches mix videos and resize shapes.
    return [
        _frames(rng, 3, 240, 320),
        _frames(rng, 5, 180, 240),
        _frames(rng, 1, 224, 224),
        _frames(rng, 4, 320, 240),
    ]


def test_encode_videos_matches_manual_mean_pool(encoder):
    videos = _videos(np.random.default_rng(4))
    features = encoder.encode_videos(videos)

    assert features.shape == (len(videos), encoder.dim)
    assert features.dtype == np.float32
    for index, video in enumerate(videos):
        pooled = encoder.encode_frames(video).mean(axis=0)
        expected = pooled / np.linalg.norm(pooled)
        np.testing.assert_allclose(features[index], expected, atol=FEATURE_ATOL, err_msg=f"video {index}")


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_encode_videos_independent_of_batch_size(tiny_clip_dir, encoder, batch_size):
    videos = _videos(np.random.default_rng(5))
    small_batches = ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), batch_size=batch_size))

    assert encoder.config.batch_size == 64
    np.testing.assert_allclose(
        small_batches.encode_videos(videos), encoder.encode_videos(videos), atol=FEATURE_ATOL
    )


def test_encode_videos_empty_list(encoder):
    features = encoder.encode_videos([])
    assert features.shape == (0, encoder.dim)


def test_encode_videos_rejects_video_without_frames(encoder):
    videos = [_frames(np.random.default_rng(6), 2, 64, 64), np.zeros((0, 64, 64, 3), dtype=np.uint8)]
    with pytest.raises(InvalidInputError, match="Video 1 has no frames"):
        encoder.encode_videos(videos)


def test_encode_videos_rejects_single_array(encoder):
    with pytest.raises(InvalidInputError):
        encoder.encode_videos(_frames(np.random.default_rng(7), 2, 64, 64))


# Text


def test_encode_text_unit_float32(encoder):
    features = encoder.encode_text(["a cat on a mat", "a man cooking pasta", "a cat on a mat"])

    assert features.shape == (3, encoder.dim)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=FEATURE_ATOL)
    assert float(features[0] @ features[1]) < 1 - 1e-4
    np.testing.assert_allclose(features[0], features[2], atol=FEATURE_ATOL)


def test_encode_text_independent_of_batch_size(tiny_clip_dir, encoder):
    texts = ["a dog", "a person riding a bicycle down a hill", "sunset"]
    one_per_batch = ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), batch_size=1))
    np.testing.assert_allclose(one_per_batch.encode_text(texts), encoder.encode_text(texts), atol=FEATURE_ATOL)


def test_encode_text_truncates_long_text(encoder):
    long_text = " ".join(["word"] * 500)
    features = encoder.encode_text([long_text])
    assert features.shape == (1, encoder.dim)
    assert np.isfinite(features).all()


@pytest.mark.parametrize("texts", [[""], ["a cat", "   "], ["\n\t"]])
def test_encode_text_rejects_empty_text(encoder, texts):
    with pytest.raises(InvalidInputError, match="empty"):
        encoder.encode_text(texts)


def test_encode_text_rejects_bare_string(encoder):
    with pytest.raises(InvalidInputError, match="not a single string"):
        encoder.encode_text("a cat")


def test_encode_text_empty_list(encoder):
    assert encoder.encode_text([]).shape == (0, encoder.dim)


# Preprocessing against CLIPImageProcessor (Pillow)


PARITY_SHAPES = [(240, 320), (360, 640), (100, 150), (300, 224), (500, 260)]


@pytest.mark.parametrize("uint8_resize", [True, False], ids=["uint8", "float"])
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_preprocess_matches_clip_image_processor(tiny_clip_dir, encoder, shape, uint8_resize):
    processor = _pil_processor_class().from_pretrained(tiny_clip_dir, local_files_only=True)
    rng = np.random.default_rng(8)
    frames = np.stack([_frames(rng, 1, *shape)[0], _smooth_frame(*shape)])

    expected = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    actual = preprocess_frames(torch.from_numpy(frames), encoder.preprocessing, uint8_resize=uint8_resize)

    assert actual.shape == expected.shape
    assert actual.dtype == torch.float32
    assert float((actual - expected).abs().max()) <= PIXEL_ATOL
    assert float((actual - expected).abs().mean()) <= PIXEL_MEAN_ATOL


def test_features_match_processor_pixels(tiny_clip_dir, encoder):
    processor = _pil_processor_class().from_pretrained(tiny_clip_dir, local_files_only=True)
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    frames = _frames(np.random.default_rng(9), 4, 360, 480)

    with torch.inference_mode():
        output = model.get_image_features(pixel_values=processor(images=list(frames), return_tensors="pt")["pixel_values"])
    reference = output if isinstance(output, torch.Tensor) else output.pooler_output
    reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    cosines = np.sum(encoder.encode_frames(frames) * reference, axis=1)

    assert cosines.min() > MIN_FEATURE_COSINE


def test_preprocess_pads_when_crop_exceeds_resize(encoder):
    # short_side below the crop size: CLIPImageProcessor pads with zeros (black) before normalising.
    settings = dict(size={"shortest_edge": 100}, crop_size={"height": 128, "width": 128})
    processor = _pil_processor_class()(**settings)
    preprocessing = ImagePreprocessing.from_processor_config(settings)
    frames = _frames(np.random.default_rng(10), 2, 150, 200)

    expected = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    actual = preprocess_frames(torch.from_numpy(frames), preprocessing)

    assert actual.shape == expected.shape == (2, 3, 128, 128)
    assert float((actual - expected).abs().max()) <= PIXEL_ATOL


def test_preprocessing_reads_legacy_integer_sizes():
    # The format that CLIPFeatureExtractor wrote, still found in older CLIP checkpoints.
    legacy_config = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
    preprocessing = ImagePreprocessing.from_processor_config(legacy_config)
    assert preprocessing.short_side == 224
    assert (preprocessing.crop_height, preprocessing.crop_width) == (224, 224)
    assert preprocessing.resample_mode == "bicubic"
    assert preprocessing.mean == tuple(legacy_config["image_mean"])
    assert preprocessing.std == tuple(legacy_config["image_std"])


@pytest.mark.parametrize(
    "config",
    [
        {"resample": 1},
        {"do_center_crop": False},
        {"do_resize": False},
        {"size": {"height": 224, "width": 224}},
        {"image_mean": [0.5, 0.5]},
    ],
    ids=["lanczos", "no_crop", "no_resize", "square_size", "two_means"],
)
def test_preprocessing_rejects_unsupported_config(config):
    with pytest.raises(ValueError):
        ImagePreprocessing.from_processor_config(config)
