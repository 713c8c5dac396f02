"""CLIP for lab 05: loading OpenAI's model (or a local stand-in), encoding, the embedding CSV.

Everything public is importable from here: ``from labutils.clip import load_clip, ...``.
  load      load_clip: OpenAI's weights, else the stand-in
  encoder   load_checkpoint, ClipEncoder (encode_text, encode_images, similarity)
  standin   the small stand-in CLIP trained on the flower photos when ViT-B/32 is unavailable
  captions  the stand-in's captions: class + colours measured from the pixels
  cache     the CSV of image embeddings, tied to the model that made it
  dataset   flowers with their embeddings as labels
  figures   the similarity matrix (the prompt explorer is in labutils.interactive)
"""
from .cache import CacheFormatError, CacheMismatchError, embedding_cache, read_cache
from .captions import captions_for, class_noun, measure
from .dataset import default_cache_csv, load_flowers_with_clip
from .encoder import (DEFAULT_MODEL, EMBED_DIM, ClipEncoder, ClipUnavailableError, PromptError,
                      file_fingerprint, load_checkpoint, normalise, save_checkpoint)
from .load import load_clip
from .standin import (STANDIN, TINY, StandinConfig, build_standin, config_for_profile,
                      default_cache_dir, heldout_flowers, load_standin, split_paths,
                      train_standin_clip, zero_shot_accuracy, zero_shot_prompts)
from .figures import plot_similarity

__all__ = [
    "CacheFormatError", "CacheMismatchError", "embedding_cache", "read_cache",
    "captions_for", "class_noun", "measure",
    "default_cache_csv", "load_flowers_with_clip",
    "DEFAULT_MODEL", "EMBED_DIM", "ClipEncoder", "ClipUnavailableError", "PromptError",
    "file_fingerprint", "load_checkpoint", "load_clip", "normalise", "save_checkpoint",
    "STANDIN", "TINY", "StandinConfig", "build_standin", "config_for_profile",
    "default_cache_dir", "heldout_flowers", "load_standin", "split_paths", "train_standin_clip",
    "zero_shot_accuracy", "zero_shot_prompts",
    "plot_similarity",
]
