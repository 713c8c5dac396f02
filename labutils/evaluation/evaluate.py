"""Score a lab's model with its judge: what ``labutils eval`` and the notebooks call.

Everything lab-specific comes from the registry (:mod:`labutils.labs`): the data key picks the
judge, the conditioning picks what is measured:
- ``classes``:   for each guidance weight w, ``n`` samples spread evenly over the classes:
                 conditional accuracy (per class, overall), Frechet distance; the best w named;
- ``clip-text``: the same, the context being one prompt per class: the lab's own prompt that
                 names it (``spec.prompt_classes``, e.g. lab 05's "A red rose bud" for roses),
                 else "a photo of a <class>";
- ``none``:      ``n`` unguided samples: Frechet distance and the judge's class histogram.
Frechet distances come with the sample count and the real-vs-real floor at that count.
Lab 01's denoiser has no T and generates nothing: :func:`evaluate_denoiser` scores it on noised
held-out images instead (the judge's accuracy on clean, noised and denoised images).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..config import ConfigError, seeded
from ..diffusion import sample_w
from ..labs import lab01_noise, unguided_samples
from ..modules import evaluating
from ..sample_limits import sampling_chunk
from .judges import CI_TRAIN_IMAGES, Judge, get_judge
from .metrics import (best_weight, class_histogram, clip_score, conditional_accuracy,
                      frechet_distance, histogram_entropy, real_floor)

DEFAULT_WEIGHTS = (0.0, 1.0, 2.0)


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") and not name.endswith("ss") else name


def class_prompts(classes: Sequence[str]) -> List[str]:
    """The prompts that stand for classes in text-conditioned labs: "a photo of a daisy", ..."""
    return [f"a photo of a {_singular(c)}" for c in classes]


def judged_prompts(spec) -> List[str]:
    """One prompt per class of a text-conditioned lab, in class order: the lab's prompt that
    names the class (its registry data ``prompt_classes``), else :func:`class_prompts`'s."""
    named = dict(zip(spec.prompt_classes, spec.prompts))
    return [named.get(c, plain) for c, plain in zip(spec.classes, class_prompts(spec.classes))]


def judge_for(lab, progress=print) -> Judge:
    """The judge of ``lab``'s data at its image size (trained once and cached)."""
    small = CI_TRAIN_IMAGES if lab.settings.profile == "ci" else None
    judge = get_judge(lab.spec.data, lab.settings.img_size, lab.data_dir, max_train=small,
                      progress=progress)
    if len(judge.classes) != len(lab.spec.classes):
        raise ConfigError(f"the judge knows {len(judge.classes)} classes, {lab.settings.lab} "
                          f"{len(lab.spec.classes)}")
    return judge


@torch.no_grad()
def generate_guided(lab, model, context: torch.Tensor, w: float, steps: Optional[int] = None,
                    *, sampler=None) -> torch.Tensor:
    """One guided sample per context row at weight ``w``, in chunks (RNG: the caller's);
    ``sampler``: a schedule from ``lab.sampler(...)`` (default: ``lab.sampler(steps)``)."""
    ddpm = sampler or lab.sampler(steps)
    out = []
    chunk = sampling_chunk(lab.device)
    for i in range(0, len(context), chunk):
        x, _ = sample_w(model, ddpm, lab.image_shape, ddpm.T, context[i:i + chunk], lab.device,
                        [w], store_freq=ddpm.T + 1)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def generate_unguided(lab, model, n: int, steps: Optional[int] = None, *, sampler=None
                      ) -> torch.Tensor:
    x, _ = unguided_samples(lab, model, n, sampler or lab.sampler(steps))
    return x.clamp(-1, 1)


def _clip_score(lab, images: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP score of each sample with its own prompt, by the lab's CLIP (a stand-in's score is
    not comparable with published ones; the report says which CLIP scored)."""
    from ..plotting import to_image
    features = lab.encoder().encode_images([to_image(x) for x in images])
    return clip_score(features, text_features.cpu())


def _fd(judge: Judge, images: torch.Tensor, floor: Dict) -> Dict:
    m = floor["n"]
    return {"frechet": frechet_distance(judge.features(images[:m]), floor["reference"]),
            "n": m}


def heldout_floor(judge: Judge, n: int, seed: int = 0) -> Dict:
    """:func:`real_floor` of the judge's held-out images (features of the drawn ones only)."""
    return real_floor(judge.heldout.images, n, seed, features=judge.features)


def evaluate(lab, model, *, n: int = 100, weights: Optional[Sequence[float]] = None,
             steps: Optional[int] = None, sampler: Optional[str] = None,
             eta: Optional[float] = None,
             seed: int = 0, judge: Optional[Judge] = None, progress=print) -> Dict:
    """Score ``model`` (a model of ``lab``) with the judge; a JSON-ready dict (see
    :func:`format_report`). ``n``: samples per guidance weight (unguided labs: in all);
    ``sampler`` "ddpm" or "ddim" over ``steps`` steps (defaults: the lab's settings)."""
    s, spec = lab.settings, lab.spec
    if not s.T:
        raise ConfigError(f"{s.lab} is not a diffusion model (no T): it generates nothing to "
                          "judge")
    if n < 2:
        raise ConfigError(f"--n must be at least 2 to measure anything, got {n}")
    judge = judge or judge_for(lab, progress)
    real = judge.heldout
    floor = heldout_floor(judge, n, seed)
    schedule = lab.sampler(steps, sampler, eta)
    report = {
        "lab": s.lab, "profile": s.profile, "conditioning": spec.conditioning,
        "sampler": sampler or s.sampler, "eta": getattr(schedule, "eta", None),
        "sampling_steps": schedule.T, "T": s.T, "n": n, "seed": seed,
        "judge": {"name": judge.name, "source": judge.meta["source"],
                  "heldout_accuracy": judge.test_accuracy, "n_heldout": len(real),
                  "note": judge.note},
        "real_floor": {"frechet": floor["floor"], "n": floor["n"]},
    }
    model.eval()
    if spec.conditioning == "none":
        with seeded(seed, lab.device):
            images = generate_unguided(lab, model, n, sampler=schedule)
        hist = class_histogram(judge.predict(images), judge.classes)
        real_hist = class_histogram(real.labels, judge.classes)
        report["unguided"] = dict(_fd(judge, images, floor), histogram=hist,
                                  entropy_bits=histogram_entropy(hist),
                                  real_entropy_bits=histogram_entropy(real_hist))
        return report

    classes = list(spec.classes)
    requested = torch.arange(n) % len(classes)
    if spec.conditioning == "clip-text":
        prompts = judged_prompts(spec)
        rows, _ = lab.context(prompts=prompts)
        report["prompts"] = prompts
        encoder = lab.encoder()
        report["clip"] = {"model_id": str(encoder.model_id), "standin": encoder.is_standin}
    else:
        rows, _ = lab.context(classes=list(range(len(classes))))
    context = rows[requested.to(rows.device)]
    per_w = {}
    for i, w in enumerate(DEFAULT_WEIGHTS if weights is None else weights):
        with seeded(seed + i, lab.device):
            images = generate_guided(lab, model, context, float(w), sampler=schedule)
        acc = conditional_accuracy(judge.predict(images), requested, judge.classes)
        per_w[float(w)] = dict(_fd(judge, images, floor), accuracy=acc)
        if spec.conditioning == "clip-text":
            per_w[float(w)]["clip_score"] = _clip_score(lab, images, rows[requested])
        if progress:
            progress(f"eval {s.lab}: w={w:g}: {100 * acc['overall']:.1f}% judged as asked")
    best = best_weight({w: {"accuracy": {"overall": v["accuracy"]["overall"]}}
                        for w, v in per_w.items()})
    report["weights"] = [{"w": w, **v} for w, v in per_w.items()]
    report["best_w"] = best
    return report


@torch.no_grad()
def evaluate_denoiser(lab, model, *, n: int = 500, seed: int = 0,
                      noise: Callable[[torch.Tensor], torch.Tensor] = lab01_noise,
                      judge: Optional[Judge] = None, progress=print) -> Dict:
    """Score a one-shot denoiser (lab 01: no T, nothing to sample) with the judge: its accuracy
    on ``n`` held-out real images (a seeded draw), on the same images noised as the model was
    trained (``noise``, default the lab's ``0.5 * x + 0.5 * randn``; seeded) and on the model's
    outputs for those, with the mean squared error of each to the clean images (the outputs are
    judged as they come, unclamped, like the noised images). A JSON-ready dict (see
    :func:`format_denoiser_report`). An identity model scores the noised accuracy; a perfect
    one the clean accuracy."""
    s = lab.settings
    if s.T:
        raise ConfigError(f"{s.lab} is a diffusion model (T={s.T}): score its samples with "
                          "evaluate()")
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    judge = judge or judge_for(lab, progress)
    real = judge.heldout.subset(n, seed=seed)
    clean = real.images.float().cpu()
    with seeded(seed):
        noised = noise(clean)
    outs = []
    chunk = sampling_chunk(lab.device)
    with evaluating(model):
        for i in range(0, len(noised), chunk):
            outs.append(model(noised[i:i + chunk].to(lab.device)).float().cpu())
    denoised = torch.cat(outs)
    rows = {}
    for name, images in (("clean", clean), ("noised", noised), ("denoised", denoised)):
        hit = (judge.predict(images) == real.labels.cpu()).float().mean()
        rows[name] = {"accuracy": float(hit), "mse": float((images - clean).pow(2).mean())}
    return {"lab": s.lab, "profile": s.profile, "n": len(real), "seed": seed,
            "judge": {"name": judge.name, "source": judge.meta["source"],
                      "heldout_accuracy": judge.test_accuracy, "n_heldout": len(judge.heldout),
                      "note": judge.note},
            **rows}


def format_denoiser_report(report: Dict) -> str:
    """:func:`evaluate_denoiser`'s dict as a terminal table."""
    j = report["judge"]
    lines = [f"{report['lab']} ({report['profile']} profile, seed {report['seed']}): "
             f"{report['n']} held-out real images",
             f"judge {j['name']}: {_pct(j['heldout_accuracy']).strip()} on {j['n_heldout']} "
             f"held-out real images ({j['source']})"]
    if j.get("note"):
        lines.append(j["note"])
    lines.append("images                       judged right   MSE to clean")
    labels = {"clean": "clean", "noised": "noised (as in training)",
              "denoised": "denoised by the model"}
    for key, label in labels.items():
        row = report[key]
        lines.append(f"{label:<28} {_pct(row['accuracy']):>12}   {row['mse']:12.4f}")
    gap = report["clean"]["accuracy"] - report["noised"]["accuracy"]
    if gap > 0:
        won = (report["denoised"]["accuracy"] - report["noised"]["accuracy"]) / gap
        lines.append(f"the model wins back {100 * won:.0f}% of the accuracy the noise cost"
                     if won >= 0 else "the model's outputs are judged worse than the noised "
                     "images it was given")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_report(report: Dict) -> str:
    """The report as a terminal table."""
    j, fl = report["judge"], report["real_floor"]
    lines = [f"{report['lab']} ({report['profile']} profile, {report.get('sampler', 'ddpm')} "
             f"sampler, {report['sampling_steps']} of T={report['T']} reverse steps, "
             f"seed {report['seed']})",
             f"judge {j['name']}: {_pct(j['heldout_accuracy']).strip()} on {j['n_heldout']} "
             f"held-out real images ({j['source']})"]
    if j.get("note"):
        lines.append(j["note"])
    lines.append(f"Frechet distance on judge features, {fl['n']} samples vs {fl['n']} real; "
                 f"real-vs-real floor at that count: {fl['frechet']:.3f}")
    if "unguided" in report:
        u = report["unguided"]
        lines.append(f"unguided: {report['n']} samples, Frechet {u['frechet']:.3f} "
                     f"({u['frechet'] / max(fl['frechet'], 1e-12):.1f}x floor), class entropy "
                     f"{u['entropy_bits']:.2f} bits (real {u['real_entropy_bits']:.2f})")
        width = max(len(c) for c in u["histogram"])
        for c, k in u["histogram"].items():
            lines.append(f"  {c:<{width}} {k:5d}  {'#' * round(40 * k / report['n'])}")
        return "\n".join(lines)
    classes = list(report["weights"][0]["accuracy"]["per_class"])
    short = [c[:7] for c in classes]
    lines.append(f"conditional accuracy ({report['n']} samples per w, judged as the class asked "
                 "for; chance " + _pct(1 / len(classes)).strip() + "):")
    lines.append("     w  overall  Frechet  xfloor  " + " ".join(f"{c:>7}" for c in short))
    for row in report["weights"]:
        a = row["accuracy"]
        ratio = row["frechet"] / max(fl["frechet"], 1e-12)
        lines.append(f"{row['w']:6g}  {_pct(a['overall'])}  {row['frechet']:7.3f}  "
                     f"{ratio:6.1f}  " + " ".join(f"{_pct(a['per_class'][c]):>7}"
                                                  for c in classes))
    if report.get("best_w") is not None:
        best = next(r for r in report["weights"] if r["w"] == report["best_w"])
        lines.append(f"best w = {report['best_w']:g}: {_pct(best['accuracy']['overall']).strip()}"
                     f" (judge on real images: {_pct(j['heldout_accuracy']).strip()})")
    if "clip" in report:
        c = report["clip"]
        which = ("a LOCAL STAND-IN CLIP: not comparable with published CLIP scores"
                 if c["standin"] else "OpenAI's CLIP")
        lines.append(f"CLIP score (100 x cosine of each sample with its prompt) by {c['model_id']}"
                     f", {which}: " + ", ".join(f"w={r['w']:g} {r['clip_score']:.1f}"
                                                for r in report["weights"]))
    return "\n".join(lines)


