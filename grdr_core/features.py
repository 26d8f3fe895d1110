"""CLIP image and text features for videos and queries.

``ClipEncoder`` loads a Hugging Face CLIP checkpoint from a local directory or the
local Hugging Face cache and turns decoded frames, whole videos and query texts into
L2-normalised float32 vectors in CLIP's joint embedding space.

Frame preprocessing runs in torch on the encoder's device instead of through
``CLIPImageProcessor``: it resizes the shortest edge, center-crops, rescales and
normalises with the values of the checkpoint's ``preprocessor_config.json``, and
matches the Pillow-based ``CLIPImageProcessor`` to within one or two 8-bit levels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerBase
from transformers.utils import cached_file

from grdr_core.errors import InvalidInputError, ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# A checkpoint needs one of these: tokenizer.json (tokenizers library) or vocab.json
# with merges.txt (the BPE files OpenAI CLIP shipped).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")

# Defaults of transformers' CLIPImageProcessor, used for keys missing from a checkpoint's file.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling filter codes (PIL.Image.Resampling) that this module can reproduce,
# mapped to the torch interpolation mode that matches them when antialias=True.
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}

# Errors that transformers, huggingface_hub and safetensors raise for a missing,
# incomplete or incompatible checkpoint.
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)

_FIX_HINT = (
    "Pass --model /path/to/dir with a CLIP model saved by save_pretrained() "
    "(config.json, weights, tokenizer files and preprocessor_config.json), or run "
    "`python -m grdr_core.testing.tiny_clip DIR` to write a tiny random CLIP whose "
    "embeddings are meaningless but which works offline for tests."
)


@dataclass(frozen=True)
class EncoderConfig:
    """Settings of a ``ClipEncoder``.

    ``model`` is a local directory or a Hugging Face hub name, ``device`` a torch device
    of type cpu or cuda ("cpu", "cuda", "cuda:1"), and ``batch_size`` the maximum number
    of frames or texts per forward pass.
    """

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidInputError(f"Invalid model {self.model!r}: expected a local directory or a hub name.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInputError(f"Invalid batch size {self.batch_size!r}: expected an integer >= 1.")
        _parse_device(self.device)


@dataclass(frozen=True)
class ImagePreprocessing:
    """Frame preprocessing read from a CLIP checkpoint's ``preprocessor_config.json``.

    ``short_side`` is the length in pixels that the shortest edge is resized to, and
    ``crop_height`` and ``crop_width`` the center crop in pixels. ``scale`` multiplies
    the 0-255 pixel values before ``mean`` is subtracted and the result divided by ``std``.
    """

    short_side: int
    crop_height: int
    crop_width: int
    resample_mode: str = "bicubic"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_IMAGE_MEAN
    std: tuple[float, float, float] = CLIP_IMAGE_STD

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        """Read the settings from a ``CLIPImageProcessor`` configuration dictionary.

        Raises ``ValueError`` for a configuration that ``CLIPImageProcessor`` accepts
        but this module does not reproduce, naming the key.
        """
        if config.get("do_resize", True) is not True:
            raise ValueError("do_resize=false is not supported: frames must be resized to a shortest edge")
        if config.get("do_center_crop", True) is not True:
            raise ValueError("do_center_crop=false is not supported: frames must be center-cropped")

        short_side = _read_shortest_edge(config.get("size", {"shortest_edge": 224}))
        crop_height, crop_width = _read_crop_size(config.get("crop_size", {"height": 224, "width": 224}))

        resample = config.get("resample", 3)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={resample!r} is not supported: expected one of {sorted(RESAMPLE_MODES)}")

        scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        if config.get("do_normalize", True):
            mean = _read_channel_triple(config, "image_mean", CLIP_IMAGE_MEAN)
            std = _read_channel_triple(config, "image_std", CLIP_IMAGE_STD)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

        return cls(
            short_side=short_side,
            crop_height=crop_height,
            crop_width=crop_width,
            resample_mode=RESAMPLE_MODES[resample],
            scale=scale,
            mean=mean,
            std=std,
        )


def _read_shortest_edge(size: Any) -> int:
    # Older CLIP checkpoints, written for CLIPFeatureExtractor, store a bare integer,
    # which CLIPImageProcessor reads as the shortest edge.
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, dict) and set(size) == {"shortest_edge"}:
        value = size["shortest_edge"]
    else:
        raise ValueError(f"size={size!r} is not supported: expected {{'shortest_edge': N}} or an integer")
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"size={size!r} is invalid: the shortest edge must be an integer >= 1")
    return value


def _read_crop_size(crop_size: Any) -> tuple[int, int]:
    if isinstance(crop_size, int) and not isinstance(crop_size, bool):
        height = width = crop_size
    elif isinstance(crop_size, dict) and {"height", "width"} <= set(crop_size):
        height, width = crop_size["height"], crop_size["width"]
    else:
        raise ValueError(f"crop_size={crop_size!r} is not supported: expected {{'height': H, 'width': W}} or an integer")
    if not all(isinstance(value, int) and value >= 1 for value in (height, width)):
        raise ValueError(f"crop_size={crop_size!r} is invalid: height and width must be integers >= 1")
    return height, width


def _read_channel_triple(config: dict[str, Any], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    value = config.get(key, default)
    if isinstance(value, (int, float)):
        value = [value] * 3
    if len(value) != 3:
        raise ValueError(f"{key}={value!r} is invalid: expected one value per RGB channel")
    return (float(value[0]), float(value[1]), float(value[2]))


def preprocess_frames(
    frames: torch.Tensor,
    preprocessing: ImagePreprocessing,
    *,
    uint8_resize: bool | None = None,
) -> torch.Tensor:
    """Turn (n, H, W, 3) uint8 RGB frames into (n, 3, crop_height, crop_width) float32 CLIP input.

    Runs on the frames' device. Frames whose shortest edge already equals
    ``short_side`` are not resized. ``uint8_resize=True`` selects torch's uint8 resize
    kernel, which only the CPU has. By default the CPU uses it, and other devices
    use ``resize_two_pass`` on float32 values.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidInputError(
            f"Frames have dtype {frames.dtype} and shape {tuple(frames.shape)}, expected uint8 (n, H, W, 3)."
        )
    images = frames.permute(0, 3, 1, 2)
    height, width = images.shape[-2:]

    target = _resized_shape(height, width, preprocessing.short_side)
    if target != (height, width):
        if uint8_resize is None:
            uint8_resize = images.device.type == "cpu"
        if uint8_resize:
            # The CPU kernel is fastest on uint8 in the channels-last layout that the
            # permute of an NHWC array gives, and matches Pillow to two 8-bit levels.
            images = F.interpolate(images, size=target, mode=preprocessing.resample_mode, antialias=True)
        else:
            images = resize_two_pass(images.float(), target, preprocessing.resample_mode)

    images = _center_crop(images, preprocessing.crop_height, preprocessing.crop_width)

    # (x * scale - mean) / std as one multiply and one subtract, in place on a
    # contiguous copy. On a 2-core x86 VM this took 83 ms for 64 frames of 224x224
    # pixels, against 212 ms for the plain expression.
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    pixels = images.to(torch.float32, memory_format=torch.contiguous_format)
    return pixels.mul_(preprocessing.scale / std).sub_(mean / std)


def _resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    # Same rounding as transformers.image_transforms.get_resize_output_image_size:
    # the long side is truncated, not rounded.
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def resize_two_pass(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize float images with integer 0-255 values like Pillow does for uint8 images.

    Pillow resizes horizontally, then vertically, rounding and clipping to 8 bits after
    each pass. Doing the same in float keeps the result within two 8-bit levels of
    Pillow's, where a single antialiased float resize differed by up to 22 levels on
    random-noise frames. Returns float32 with integer values in [0, 255].
    """
    height = images.shape[-2]
    images = F.interpolate(images, size=(height, size[1]), mode=mode, antialias=True)
    images = images.clamp_(0, 255).round_()
    images = F.interpolate(images, size=size, mode=mode, antialias=True)
    return images.clamp_(0, 255).round_()


def _center_crop(images: torch.Tensor, crop_height: int, crop_width: int) -> torch.Tensor:
    # Same offsets as transformers.image_transforms.center_crop, including its zero
    # padding when an image is smaller than the crop.
    height, width = images.shape[-2:]
    if height < crop_height or width < crop_width:
        pad_top = math.ceil((max(crop_height, height) - height) / 2)
        pad_left = math.ceil((max(crop_width, width) - width) / 2)
        pad_bottom = max(crop_height, height) - height - pad_top
        pad_right = max(crop_width, width) - width - pad_left
        images = F.pad(images, (pad_left, pad_right, pad_top, pad_bottom))
        height, width = images.shape[-2:]

    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return images[..., top : top + crop_height, left : left + crop_width]


def _parse_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidInputError(f"Invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'.") from err
    if parsed.type not in SUPPORTED_DEVICE_TYPES:
        raise InvalidInputError(f"Unsupported device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'.")
    return parsed


def _check_device_available(device: torch.device) -> None:
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise InvalidInputError(
            f"Device {str(device)!r} was requested but CUDA is not available "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Use --device cpu."
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise InvalidInputError(
            f"Device {str(device)!r} was requested but only {count} CUDA device(s) are visible "
            f"(valid: cuda:0 to cuda:{count - 1})."
        )


def _tensor_digest_header(name: str, tensor: torch.Tensor) -> bytes:
    return f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode()


def state_dict_checksum(model: torch.nn.Module) -> str:
    """Return ``"sha256:<hex>"`` over a model's state dict.

    The hash covers each entry's name, dtype, shape and raw bytes in name order, so
    it identifies the weights whatever file format they were stored in.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(_tensor_digest_header(name, tensor))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class _Checkpoint:
    source: str  # what from_pretrained() is given: a directory path or a hub name
    clip_config: CLIPConfig
    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    preprocessing: ImagePreprocessing


def _load_checkpoint(model: str) -> _Checkpoint:
    """Load a CLIP checkpoint from a local directory or, failing that, the local hub cache."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        try:
            return _load_from(str(path))
        except _LOAD_ERRORS as err:
            raise ModelLoadError(
                f"Could not load CLIP model {model!r} from the local directory {path}: {_first_line(err)}. {_FIX_HINT}"
            ) from err

    if path.is_dir():
        directory_problem = f"{path.absolute()} exists but contains no config.json"
    else:
        directory_problem = f"{path.absolute()} does not exist"

    try:
        return _load_from(model)
    except _LOAD_ERRORS as err:
        raise ModelLoadError(
            f"Could not load CLIP model {model!r}. As a local directory: {directory_problem}. "
            f"As a Hugging Face hub name (local cache only, no download attempted): {_first_line(err)}. "
            f"{_FIX_HINT}"
        ) from err


def _load_from(source: str) -> _Checkpoint:
    # NOTE: local_files_only=True means hub names load only from the local Hugging Face
    # cache and nothing is downloaded, whether or not HF_HUB_OFFLINE is set. Download
    # a checkpoint beforehand (e.g. with `hf download`) or save it to a directory.
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"the checkpoint is a {config.model_type!r} model, not a CLIP model (model_type 'clip')")

    with open(cached_file(source, IMAGE_PROCESSOR_FILE, local_files_only=True), encoding="utf-8") as file:
        preprocessing = ImagePreprocessing.from_processor_config(json.load(file))
    image_size = config.vision_config.image_size
    if (preprocessing.crop_height, preprocessing.crop_width) != (image_size, image_size):
        raise ValueError(
            f"{IMAGE_PROCESSOR_FILE} crops to {preprocessing.crop_height}x{preprocessing.crop_width} pixels "
            f"but the vision model expects {image_size}x{image_size}"
        )

    tokenizer = _load_tokenizer(source, config)
    clip = CLIPModel.from_pretrained(source, config=config, local_files_only=True)
    return _Checkpoint(source, config, clip, tokenizer, preprocessing)


def _load_tokenizer(source: str, config: CLIPConfig) -> PreTrainedTokenizerBase:
    # transformers 5 builds a CLIPTokenizer with a 3-token vocabulary when the
    # tokenizer files are missing, so their presence is checked first.
    if not any(_has_file(source, name) for name in TOKENIZER_FILES):
        raise ValueError(f"no tokenizer files found: expected {' or '.join(TOKENIZER_FILES)}")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)

    text_config = config.text_config
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the text model only {text_config.vocab_size} embeddings"
        )
    # The text model pools the hidden state at the first eos_token_id. For older
    # checkpoints that store eos_token_id=2, transformers pools at the highest token
    # id instead (OpenAI CLIP's end-of-text token), so that value is not checked.
    if text_config.eos_token_id != 2 and tokenizer.eos_token_id != text_config.eos_token_id:
        raise ValueError(
            f"the tokenizer's end-of-text id {tokenizer.eos_token_id} differs from the text model's "
            f"eos_token_id {text_config.eos_token_id}"
        )
    return tokenizer


def _has_file(source: str, name: str) -> bool:
    try:
        cached_file(source, name, local_files_only=True)
    except OSError:
        return False
    return True


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0].strip() if lines else type(err).__name__
    return text.rstrip(".")


class ClipEncoder:
    """CLIP image and text encoder that returns L2-normalised float32 features.

    Loads the model, tokenizer and image preprocessing settings of ``config.model`` and
    runs the model in eval mode without gradients on ``config.device``. Raises
    ``ModelLoadError`` when the model cannot be loaded and ``InvalidInputError`` when
    the requested CUDA device is not available.
    """

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config
        self._device = _parse_device(config.device)
        _check_device_available(self._device)

        checkpoint = _load_checkpoint(config.model)
        self._model = checkpoint.model.float().eval().to(self._device)
        self._tokenizer = checkpoint.tokenizer
        self._preprocessing = checkpoint.preprocessing

        self.name: str = config.model
        self.dim: int = int(checkpoint.clip_config.projection_dim)
        self.image_size: int = int(checkpoint.clip_config.vision_config.image_size)
        self.short_side: int = checkpoint.preprocessing.short_side
        self._max_text_tokens = int(checkpoint.clip_config.text_config.max_position_embeddings)

        # The source differs from the name only for a directory given with "~".
        origin = self.name if checkpoint.source == self.name else f"{self.name} ({checkpoint.source})"
        logger.info(
            "Loaded CLIP %s on %s: %d-d features, shortest edge resized to %d px, %d px crops",
            origin, self._device, self.dim, self.short_side, self.image_size,
        )

    @property
    def device(self) -> torch.device:
        """Device that preprocessing and the model run on."""
        return self._device

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """Frame preprocessing settings read from the checkpoint."""
        return self._preprocessing

    @cached_property
    def checksum(self) -> str:
        """``"sha256:<hex>"`` of the float32 weights, computed on first access."""
        return state_dict_checksum(self._model)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Encode (n, H, W, 3) uint8 RGB frames into (n, dim) float32 unit-length image features."""
        _check_frames(frames, "frames")
        features = self._encode_pixel_batches(self._pixel_batches([frames]))
        return features.numpy()

    def encode_videos(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        """Encode videos, each (n_i, H_i, W_i, 3) uint8 RGB frames, into (len, dim) float32 features.

        Frames of consecutive videos share forward passes of up to ``batch_size``
        frames. Each video's feature is the mean of its unit-length frame features,
        scaled to unit length again. Every video needs at least one frame.
        """
        if isinstance(videos, np.ndarray):
            raise InvalidInputError("videos must be a sequence of (n, H, W, 3) arrays, not a single array.")
        counts = []
        for index, video in enumerate(videos):
            _check_frames(video, f"video {index}")
            if len(video) == 0:
                raise InvalidInputError(f"Video {index} has no frames: a video feature needs at least one frame.")
            counts.append(len(video))
        if not counts:
            return np.zeros((0, self.dim), dtype=np.float32)

        frame_features = self._encode_pixel_batches(self._pixel_batches(videos))

        video_ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        sums = torch.zeros(len(counts), self.dim, dtype=torch.float32).index_add_(0, video_ids, frame_features)
        means = sums / torch.tensor(counts, dtype=torch.float32).unsqueeze(1)
        return F.normalize(means, dim=-1).numpy()

    @property
    def max_text_tokens(self) -> int:
        """Length of the text encoder's context in tokens, start and end tokens included (77 for OpenAI CLIP)."""
        return self._max_text_tokens

    def count_text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Return each text's length in tokens before truncation, start and end tokens included."""
        encoded = self._tokenizer(list(texts), truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into (n, dim) float32 unit-length text features.

        Texts longer than the model's context (77 tokens for OpenAI CLIP) are truncated.
        Raises ``InvalidInputError`` for a text that is empty or only whitespace.
        """
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a sequence of strings, not a single string.")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"Text {index} is a {type(text).__name__}, expected a string.")
            if not text.strip():
                raise InvalidInputError(f"Text {index} is empty or only whitespace: {text!r}.")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)

        batches = []
        batch_size = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self._tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self._max_text_tokens,
                    return_tensors="pt",
                ).to(self._device)
                output = self._model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
                batches.append(_unit_features(output))
        return torch.cat(batches).numpy()

    def _pixel_batches(self, videos: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield preprocessed frames of all videos, in order, in batches of ``batch_size`` frames.

        A batch may contain frames of several videos. Only the last batch may be smaller.
        """
        batch_size = self.config.batch_size
        pending: list[torch.Tensor] = []
        pending_count = 0
        for video in videos:
            for start in range(0, len(video), batch_size):
                pending.append(self._preprocess(video[start : start + batch_size]))
                pending_count += len(pending[-1])
                if pending_count >= batch_size:
                    merged = torch.cat(pending)
                    yield merged[:batch_size]
                    pending = [merged[batch_size:]]
                    pending_count -= batch_size
        if pending_count:
            yield torch.cat(pending)

    def _preprocess(self, frames: np.ndarray) -> torch.Tensor:
        if not frames.flags.writeable:
            # torch.from_numpy warns on read-only arrays, such as np.frombuffer views.
            frames = frames.copy()
        tensor = torch.from_numpy(frames).to(self._device)
        return preprocess_frames(tensor, self._preprocessing)

    def _encode_pixel_batches(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Run the vision tower on pixel batches; return (n, dim) unit-length float32 on the CPU."""
        outputs = []
        with torch.inference_mode():
            for pixels in batches:
                outputs.append(_unit_features(self._model.get_image_features(pixel_values=pixels)))
        if not outputs:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        return torch.cat(outputs)


def _unit_features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output contains the projected
    # features; transformers 4 returns the tensor itself.
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return F.normalize(features.float(), dim=-1).cpu()


def _check_frames(frames: Any, label: str) -> None:
    if not isinstance(frames, np.ndarray):
        raise InvalidInputError(f"{label} is a {type(frames).__name__}, expected a numpy array of shape (n, H, W, 3).")
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise InvalidInputError(f"{label} has shape {frames.shape}, expected (n, H, W, 3) RGB frames.")
    if frames.dtype != np.uint8:
        raise InvalidInputError(f"{label} has dtype {frames.dtype}, expected uint8.")
