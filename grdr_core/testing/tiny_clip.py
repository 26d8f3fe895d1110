"""Write a tiny, randomly initialised CLIP model directory for offline tests.

The directory loads with ``CLIPModel``, ``CLIPTokenizer`` (or ``AutoTokenizer``) and
``CLIPImageProcessor`` ``from_pretrained`` without network access. Its embeddings are
random and carry no meaning, so it is only good for smoke tests and plumbing.

Run ``python -m grdr_core.testing.tiny_clip DIR`` to write one from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

logger = logging.getLogger(__name__)

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# The vision tower takes 224x224 inputs like pretrained ViT-B CLIP models, so the
# image processor settings below are the defaults of transformers' CLIPImageProcessor
# and preprocessing code gets the same resize and crop sizes as with a real checkpoint.
IMAGE_SIZE = 224
PATCH_SIZE = 32
HIDDEN_SIZE = 32
INTERMEDIATE_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 2
PROJECTION_DIM = 16
MAX_TEXT_TOKENS = 77

# OpenAI CLIP's normalisation constants (mean and std per RGB channel of its training images).
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# A few merges so the BPE model has something to apply. Each pair's parts must be
# in the vocabulary before the merge, and the merged symbol is added to it.
MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("o", "n</w>"),
    ("e", "r"),
    ("o", "f</w>"),
]


def _bytes_to_unicode() -> dict[int, str]:
    """Map each byte value to the printable character that byte-level BPE uses for it.

    This is the GPT-2 and CLIP table: printable Latin-1 bytes map to themselves and the
    remaining bytes to code points from 256 upwards, in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next_code_point)
            next_code_point += 1
    return mapping


def build_vocab() -> dict[str, int]:
    """Build a CLIP-style vocabulary: bytes, bytes ending a word, merges, then the specials."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + END_OF_WORD for symbol in symbols]
    tokens += [left + right for left, right in MERGES]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def _write_tokenizer(directory: Path) -> dict[str, int]:
    vocab = build_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in MERGES]
    (directory / "merges.txt").write_text("\n".join(merges_lines) + "\n", encoding="utf-8")

    # vocab.json and merges.txt are what the Python CLIPTokenizer of transformers 4
    # reads. save_pretrained() adds tokenizer.json and tokenizer_config.json, which
    # the tokenizers-backed CLIPTokenizer of transformers 5 reads.
    # NOTE: this constructor signature (vocab=, merges=) is transformers 5's. Under
    # transformers 4 it needs CLIPTokenizer.from_pretrained(directory) instead.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(MERGES), model_max_length=MAX_TEXT_TOKENS)
    tokenizer.save_pretrained(str(directory))
    return vocab


def _write_image_processor_config(directory: Path) -> None:
    # Written as JSON so that no image backend (Pillow or torchvision) is needed here.
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_IMAGE_MEAN,
        "image_std": CLIP_IMAGE_STD,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def tiny_clip_config(vocab: dict[str, int]) -> CLIPConfig:
    """Return the configuration of the tiny CLIP for a tokenizer vocabulary."""
    text_config = {
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "max_position_embeddings": MAX_TEXT_TOKENS,
        "projection_dim": PROJECTION_DIM,
        "bos_token_id": vocab[START_TOKEN],
        "eos_token_id": vocab[END_TOKEN],
        "pad_token_id": vocab[END_TOKEN],
    }
    vision_config = {
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "projection_dim": PROJECTION_DIM,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=PROJECTION_DIM)


def write_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP (weights, tokenizer, image processor config) into ``directory``.

    The same seed gives the same weights, and the global torch random state is left
    as it was. The directory is created if missing, and files in it are overwritten.
    Returns the directory as a ``Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    vocab = _write_tokenizer(directory)
    _write_image_processor_config(directory)

    config = tiny_clip_config(vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(str(directory))

    logger.info("Wrote a tiny random CLIP (seed %d) to %s", seed, directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m grdr_core.testing.tiny_clip",
        description="Write a tiny randomly initialised CLIP model directory for offline smoke tests.",
    )
    parser.add_argument("directory", type=Path, help="output directory; created if missing, files in it are overwritten")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = parser.parse_args(argv)

    directory = write_tiny_clip(args.directory, seed=args.seed)
    print(
        f"Wrote a tiny CLIP model to {directory}. Its embeddings are meaningless random values, "
        "good only for smoke tests."
    )


if __name__ == "__main__":
    main()
