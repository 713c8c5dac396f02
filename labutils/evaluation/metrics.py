"""Numbers that say how good generated images are, from a judge (:mod:`.judges`).

- :func:`frechet_distance` between two sets of the judge's penultimate features (the FID
  formula, on a small in-domain classifier instead of Inception). It depends on the sample
  count, so every figure comes with its count and with :func:`real_floor`, the distance between
  two disjoint sets of *real* held-out images of the same count: a perfect generator scores
  about the floor. Never compare figures from different judges or counts.
- :func:`conditional_accuracy`: the share of samples that the judge assigns to the class they
  were generated for, per class and overall; :func:`best_weight` picks the guidance weight.
- :func:`class_histogram`: what an unconditioned model draws (a mode collapse shows).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch


def _stats(features: torch.Tensor):
    f = features.double()
    if f.dim() != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature rows [N, D], got shape {tuple(f.shape)}")
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (len(f) - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two feature sets ``[N, D]``.

    ``tr((S_a S_b)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric ``S_a^(1/2) S_b S_a^(1/2)`` (float64; no SciPy needed)."""
    mu_a, s_a = _stats(a)
    mu_b, s_b = _stats(b)
    r = _sqrt_psd(s_a)
    cross = torch.linalg.eigvalsh(r @ s_b @ r).clamp_min(0).sqrt().sum()
    value = float((mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)
    return max(value, 0.0)


def real_floor(real: torch.Tensor, n: int, seed: int = 0,
               features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Dict:
    """Split ``real`` into a reference set and a second set, each of ``n`` rows (fewer when there
    are not ``2n``): ``{"n", "floor", "reference"}``, where ``floor`` is the distance between the
    two real sets and ``reference`` the rows generated samples are compared with. ``real`` holds
    features, or images when ``features`` maps images to features (only the ``2n`` drawn ones
    are mapped: a judge's 10,000 held-out images cost seconds on a CPU)."""
    m = min(n, len(real) // 2)
    if m < 2:
        raise ValueError(f"need at least 4 real images for a floor, got {len(real)}")
    g = torch.Generator().manual_seed(seed)
    chosen = real[torch.randperm(len(real), generator=g)[:2 * m]]
    if features is not None:
        chosen = features(chosen)
    ref, other = chosen[:m], chosen[m:2 * m]
    return {"n": m, "floor": frechet_distance(ref, other), "reference": ref}


def conditional_accuracy(predicted: torch.Tensor, requested: torch.Tensor,
                         classes: Sequence[str]) -> Dict:
    """``{"overall", "per_class": {name: share}, "n", "n_per_class"}``: the share of samples the
    judge assigns to the class they were generated for (classes never requested are left out)."""
    predicted, requested = predicted.cpu().long(), requested.cpu().long()
    if predicted.shape != requested.shape or predicted.dim() != 1:
        raise ValueError(f"predicted {tuple(predicted.shape)} and requested "
                         f"{tuple(requested.shape)} must be equal-length label vectors")
    if len(requested) == 0:
        raise ValueError("no samples to score")
    hit = (predicted == requested).float()
    per_class, counts = {}, {}
    for k, name in enumerate(classes):
        mask = requested == k
        if mask.any():
            per_class[name] = float(hit[mask].mean())
            counts[name] = int(mask.sum())
    return {"overall": float(hit.mean()), "per_class": per_class, "n": len(hit),
            "n_per_class": counts}


def class_histogram(predicted: torch.Tensor, classes: Sequence[str]) -> Dict[str, int]:
    """How many samples the judge puts in each class."""
    counts = torch.bincount(predicted.cpu().long(), minlength=len(classes))
    return {name: int(c) for name, c in zip(classes, counts.tolist())}


def histogram_entropy(hist: Dict[str, int]) -> float:
    """Entropy of a class histogram in bits (log2(classes) for uniform; 0 for one class)."""
    counts = torch.tensor(list(hist.values()), dtype=torch.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()) + 0.0   # + 0.0: one class gives 0.0, not -0.0


def best_weight(per_weight: Dict[float, Dict], key: str = "overall") -> Optional[float]:
    """The guidance weight whose ``accuracy[key]`` is highest (the smaller w on a tie)."""
    scored = [(v["accuracy"][key], -w, w) for w, v in per_weight.items() if v.get("accuracy")]
    return max(scored)[2] if scored else None


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP score (Hessel et al., 2021) of prompt/image pairs: the mean over rows of
    ``100 * max(cos(image_i, text_i), 0)``; row ``i`` of each is one pair."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"one text row per image: {tuple(image_features.shape)} vs "
                         f"{tuple(text_features.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_features.float(), text_features.float())
    return float(100 * cos.clamp(min=0).mean())
