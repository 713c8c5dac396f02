"""A small local stand-in for CLIP, for machines without OpenAI's ViT-B/32 weights.

It is the same ``clip.model.CLIP`` class (a small ModifiedResNet for images, a tiny text
transformer, 512-d features like ViT-B/32), trained contrastively on the flower photos paired
with captions made from each photo's class and measured colours (:mod:`.captions`). It is
trained once, cached as a plain state-dict checkpoint with a JSON sidecar (its report: held-out
zero-shot accuracy, training time), and loaded through the same code path as any CLIP
checkpoint. It knows flowers and colours only: it is a teaching stand-in, not CLIP.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import get_device, get_profile, project_dir, seed_everything
from ..data.flowers import FLOWER_CLASSES, load_flowers_tensors
from .captions import ZERO_SHOT_TEMPLATE, class_noun, image_captions, pick
from ..modules import count_parameters
from .encoder import (EMBED_DIM, ClipEncoder, clip, load_checkpoint, normalise,
                      save_checkpoint)

CLIP, convert_weights = clip.model.CLIP, clip.model.convert_weights
clip_transform = clip.clip._transform

VOCAB_SIZE = 49408      # clip.tokenize's vocabulary: the token embedding must cover it
CONTEXT_LENGTH = 77


@dataclasses.dataclass(frozen=True)
class StandinConfig:
    """Architecture and training of a stand-in. ``vision_layers`` (a tuple) picks CLIP's
    ModifiedResNet; its input must be a multiple of 32 pixels."""

    name: str
    image_resolution: int = 64
    vision_layers: Tuple[int, int, int, int] = (1, 1, 1, 1)
    vision_width: int = 16          # ResNet stem width; attention-pool heads = width / 2
    transformer_width: int = 64     # text transformer (heads = width / 64, as build_model infers)
    transformer_layers: int = 2
    epochs: int = 40               # 25 gave 79% zero-shot on the held-out photos, 40 gives 82%
    max_steps: Optional[int] = None     # train exactly this many steps (epochs then ignored)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    heldout_fraction: float = 0.15
    seed: int = 0
    version: int = 3                # bump when the training code changes what it makes
    #                                 (2: class-description captions, feature-norm term;
    #                                  3: the alignment term)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
                              ).hexdigest()[:10]


# quick/full: the stand-in the labs use; ci: a tiny one trained for a few steps (seconds).
STANDIN = StandinConfig("flowers-resnet64")
TINY = StandinConfig("tiny-ci", image_resolution=32, vision_width=8, transformer_layers=1,
                     epochs=1, max_steps=8, batch_size=32)


def config_for_profile(profile: Optional[str] = None) -> StandinConfig:
    return TINY if get_profile(profile) == "ci" else STANDIN


def build_standin(config: StandinConfig) -> CLIP:
    """An untrained ``clip.model.CLIP`` with 512-d features (like ViT-B/32)."""
    return CLIP(EMBED_DIM, config.image_resolution, tuple(config.vision_layers),
                config.vision_width, None, CONTEXT_LENGTH, VOCAB_SIZE,
                config.transformer_width, config.transformer_width // 64,
                config.transformer_layers)


def is_heldout(path: str, fraction: float) -> bool:
    """A fixed, file-name-based held-out split (the same on every machine and run)."""
    digest = hashlib.sha1(Path(path).name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < fraction


def split_paths(paths: Sequence[str], fraction: float, labels=None) -> Tuple[List[int], List[int]]:
    """Indices ``(train, heldout)`` of ``paths``, split by file name.

    With ``labels``, every class with two or more images keeps at least one held out (small
    sets, e.g. the ci fixture; the real photos hold out over a hundred per class anyway).
    """
    held = [i for i, p in enumerate(paths) if is_heldout(p, fraction)]
    if labels is not None:
        labels = [int(y) for y in labels]
        for k in sorted(set(labels)):
            mine = [i for i, y in enumerate(labels) if y == k]
            if len(mine) >= 2 and not any(labels[i] == k for i in held):
                held.append(min(mine, key=lambda i: Path(paths[i]).name))
        held.sort()
    held_set = set(held)
    return [i for i in range(len(paths)) if i not in held_set], held


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random zoom (crop 65-100% of the side), shift and left-right flip."""
    n = len(x)
    scale = 0.65 + 0.35 * torch.rand(n, generator=generator)
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


# The normalisation clip's preprocess applies (its _transform), on [-1, 1] tensors.
_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def to_clip_input(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2 - _MEAN.to(x.device)) / _STD.to(x.device)


# Lab 05 trains its U-Net on image features and samples from text features, both unnormalised
# as the course feeds real CLIP's. Real CLIP's two towers come out at norms of the same order;
# the contrastive loss alone is blind to norms, and left free the stand-in's image features
# grew three times longer than its text features (81 vs 27): a prompt then reached the U-Net
# like a third of a context. This term holds both towers near one norm.
FEATURE_NORM = 10.0
NORM_WEIGHT = 1.0
# Directions were still apart: with the norms held, a prompt's nearest photo lay at distance
# 8.5-8.9 (of 10), where photos lie 2.3 from their nearest neighbour: the U-Net was asked for
# contexts far from any it trained on. This term pulls each caption's raw features to those of
# the photos it describes (the mean of its photos, for a caption many share).
ALIGN_WEIGHT = 1.0


def align_penalty(img_raw: torch.Tensor, txt_raw: torch.Tensor, caption_ids: torch.Tensor,
                  scale: float = FEATURE_NORM) -> torch.Tensor:
    """Mean squared distance of each image's raw features to its caption's, over ``scale``²."""
    return (img_raw - txt_raw[caption_ids]).pow(2).sum(-1).mean() / scale ** 2


def norm_penalty(*features: torch.Tensor, target: float = FEATURE_NORM) -> torch.Tensor:
    """Mean squared log-ratio of each feature vector's norm to ``target`` (0 when all equal it)."""
    return torch.stack([(f.norm(dim=-1) / target).log().pow(2).mean() for f in features]).mean()


def contrastive_loss(model: CLIP, images: torch.Tensor, tokens: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss where texts are the batch's *distinct* captions, plus
    :func:`norm_penalty` on both towers' raw features and :func:`align_penalty` between them.

    Images sharing a caption are all positives of it (plain CLIP would call them negatives).
    """
    img_raw = model.encode_image(images).float()
    txt_raw = model.encode_text(tokens).float()
    img, txt = normalise(img_raw), normalise(txt_raw)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T      # [n_images, n_texts]
    loss_i = F.cross_entropy(logits, caption_ids)
    positives = F.one_hot(caption_ids, len(tokens)).float().T           # [n_texts, n_images]
    loss_t = -(positives / positives.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1)
    return ((loss_i + loss_t.mean()) / 2 + NORM_WEIGHT * norm_penalty(img_raw, txt_raw)
            + ALIGN_WEIGHT * align_penalty(img_raw, txt_raw, caption_ids))


def train_standin_clip(data, config: StandinConfig = STANDIN, device=None,
                       train_idx: Optional[Sequence[int]] = None, progress: bool = True
                       ) -> Tuple[CLIP, Dict]:
    """Train a stand-in on ``data`` (a flowers TensorImageDataset at the model's resolution).

    Returns ``(model, report)``; the model is in eval mode, its weights rounded as a saved
    checkpoint stores them (so encodings equal those of the checkpoint loaded back).
    """
    device = get_device(device)
    seed_everything(config.seed)
    rng, gen = random.Random(config.seed), torch.Generator().manual_seed(config.seed)
    idx = list(range(len(data))) if train_idx is None else list(train_idx)
    images = data.images[idx]
    labels = data.labels[idx]
    variants = image_captions(images, data.classes, labels)
    model = build_standin(config).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    batch = min(config.batch_size, len(idx))
    per_epoch = max(1, len(idx) // batch)
    steps = config.max_steps or per_epoch * config.epochs   # max_steps: a fixed budget
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=f"stand-in CLIP ({config.name})", leave=False)
    t0, c0, losses = time.perf_counter(), time.process_time(), []
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(idx), generator=gen)
        b = order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        captions = pick([variants[i] for i in b.tolist()], rng)
        distinct = sorted(set(captions))
        caption_ids = torch.tensor([distinct.index(c) for c in captions], device=device)
        x = to_clip_input(augment(images[b], gen)).to(device)
        tokens = clip.tokenize(distinct).to(device)
        loss = contrastive_loss(model, x, tokens, caption_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    round_like_checkpoint(model)
    report = {"steps": steps, "train_images": len(idx), "train_seconds": round(seconds, 1),
              "train_cpu_seconds": round(time.process_time() - c0, 1),
              "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
              "parameters": count_parameters(model), "device": str(device),
              "threads": torch.get_num_threads()}
    return model.eval(), report


def round_like_checkpoint(model: CLIP) -> None:
    """Round the weights as ``clip.model.build_model`` stores them (fp16 layers), back in fp32."""
    convert_weights(model)
    model.float()


# --- zero-shot classification --------------------------------------------------------------------

def zero_shot_prompts(classes: Sequence[str], template: str = ZERO_SHOT_TEMPLATE) -> List[str]:
    """One prompt per class, e.g. "a photo of a rose"."""
    return [template.format(class_noun(c)) for c in classes]


def zero_shot_accuracy(encoder: ClipEncoder, paths: Sequence[str], labels, classes: Sequence[str],
                       template: str = ZERO_SHOT_TEMPLATE) -> Tuple[float, torch.Tensor]:
    """Share of images whose closest prompt (cosine) names their class; also the predictions."""
    if len(paths) == 0:
        raise ValueError("zero_shot_accuracy needs at least one image")
    sims = encoder.similarity(list(paths), zero_shot_prompts(classes, template))
    pred = sims.argmax(1)
    labels = torch.as_tensor(labels).cpu()
    return float((pred == labels).float().mean()), pred


def feature_norms(encoder: ClipEncoder, paths: Sequence[str], prompts: Sequence[str]
                  ) -> Dict[str, float]:
    """Mean raw feature norm of ``paths``' images and of ``prompts`` (comparable: see
    :data:`FEATURE_NORM`)."""
    return {"image_norm": round(float(encoder.encode_images(list(paths)).norm(dim=-1).mean()), 2),
            "text_norm": round(float(encoder.encode_text(list(prompts)).norm(dim=-1).mean()), 2)}


def heldout_flowers(data_dir=None, fraction: float = STANDIN.heldout_fraction,
                    classes: Sequence[str] = FLOWER_CLASSES):
    """``(paths, labels, classes)`` of the photos no stand-in trains on."""
    data = load_flowers_tensors(img_size=8, data_dir=data_dir, classes=classes)
    _, held = split_paths(data.paths, fraction, data.labels)
    return [data.paths[i] for i in held], data.labels[held], data.classes


# --- the cached stand-in -------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``LABUTILS_CLIP_CACHE``, else ``data/clip`` of the checkout (or of the working directory)."""
    env = os.environ.get("LABUTILS_CLIP_CACHE")
    if env:
        return Path(env).expanduser()
    root = project_dir()
    return root / "data" / "clip"


def _data_key(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        p = Path(p)
        h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:10]


def standin_path(config: StandinConfig, paths: Sequence[str], cache_dir=None) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / (
        f"standin-{config.name}-{config.key()}-{_data_key(paths)}.pt")


def load_standin(device=None, flowers_dir=None, cache_dir=None, profile: Optional[str] = None,
                 config: Optional[StandinConfig] = None, retrain: bool = False,
                 progress: bool = True) -> ClipEncoder:
    """The cached stand-in for these photos and this config, trained first if needed."""
    config = config or config_for_profile(profile)
    data = load_flowers_tensors(img_size=config.image_resolution, data_dir=flowers_dir,
                                allow_fixture=get_profile(profile) == "ci")
    path = standin_path(config, data.paths, cache_dir)
    if path.is_file() and not retrain:
        return load_checkpoint(path, device)
    train_idx, held = split_paths(data.paths, config.heldout_fraction, data.labels)
    if len(train_idx) < 2:
        raise ValueError(f"only {len(train_idx)} training images for the stand-in CLIP")
    print(f"Training the stand-in CLIP '{config.name}' on {len(train_idx)} flower photos "
          f"(once; cached in {path})...", flush=True)
    model, report = train_standin_clip(data, config, device, train_idx, progress)
    meta = {"model_id": f"standin:{config.name}", "standin": True,
            "config": dataclasses.asdict(config), "classes": data.classes, **report}
    if held:  # measured on the in-memory model: its weights are already rounded as saved
        trained = ClipEncoder(model, clip_transform(config.image_resolution), meta["model_id"],
                              "", True, get_device(device))
        held_paths, prompts = [data.paths[i] for i in held], zero_shot_prompts(data.classes)
        acc, _ = zero_shot_accuracy(trained, held_paths, data.labels[held], data.classes)
        meta.update(zero_shot_accuracy=round(acc, 4), heldout_images=len(held),
                    zero_shot_prompts=prompts, **feature_norms(trained, held_paths, prompts))
    save_checkpoint(model, path, meta)
    encoder = load_checkpoint(path, device)
    print(f"Stand-in CLIP trained in {report['train_seconds']:.0f} s; zero-shot accuracy on "
          f"{len(held)} held-out photos: {meta.get('zero_shot_accuracy', float('nan')):.1%}",
          flush=True)
    return encoder
