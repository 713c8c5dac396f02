"""Captions for the stand-in CLIP: the class name plus colours measured from the pixels.

The course's prompts describe colours and centres ("A round orange sunflower with a big brown
center"), so the captions say which colour dominates the flower and which its centre, measured
in HSV from the image itself. Green (leaves) is left out of the flower colour.

Measured colours alone leave a prompt's other words unlearnt ("round", "bud", "big brown
center") and mislead where the 24-pixel measure misses (most sunflowers measure "yellow", their
centres "yellow" too), so each class also gets captions in the words people use for it
(:data:`CLASS_LOOKS`: what is true of the class, not of one photo). Without them the prompt
"A round orange sunflower with a big brown center" landed nearer daisies than sunflowers.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Dict, List, Sequence, Tuple

import torch

# The noun a caption uses for each class folder, singular and plural.
CLASS_NOUNS: Dict[str, tuple] = {
    "daisy": ("daisy", "daisies"), "sunflowers": ("sunflower", "sunflowers"),
    "roses": ("rose", "roses"), "tulips": ("tulip", "tulips"),
    "dandelion": ("dandelion", "dandelions"),
}
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "brown", "black")
ZERO_SHOT_TEMPLATE = "a photo of a {}"


@dataclasses.dataclass(frozen=True)
class Looks:
    """How people describe a kind of flower: its shape word, usual colours (empty: say the
    measured colour), its centre, and whether it is pictured as a bud."""

    shape: str = ""
    colours: Tuple[str, ...] = ()
    centre: str = ""
    bud: bool = False


CLASS_LOOKS: Dict[str, Looks] = {
    "daisy": Looks("round", ("white",), "a yellow center"),
    "sunflowers": Looks("round", ("yellow", "orange"), "a big brown center"),
    "roses": Looks(bud=True),
    "tulips": Looks("cup-shaped"),
    "dandelion": Looks("round", ("yellow",)),
}


def class_noun(cls: str, plural: bool = False) -> str:
    """The caption noun for a class folder name (unknown names are used as they are)."""
    nouns = CLASS_NOUNS.get(cls, (cls, cls))
    return nouns[1 if plural else 0]


def _hsv(x: torch.Tensor):
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an RGB ``[3, H, W]`` in [0, 1]."""
    r, g, b = x
    v, _ = x.max(0)
    c = v - x.min(0).values
    s = torch.where(v > 0, c / v.clamp_min(1e-6), torch.zeros_like(v))
    safe = c.clamp_min(1e-6)
    h = torch.where(v == r, ((g - b) / safe) % 6,
                    torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    return h % 360, s, v


def colour_words(x: torch.Tensor) -> List[str]:
    """A colour name per pixel of an RGB image ``[3, H, W]`` in [-1, 1], flattened."""
    h, s, v = _hsv(((x.float() + 1) / 2).clamp(0, 1))
    names = []
    for hh, ss, vv in zip(h.flatten().tolist(), s.flatten().tolist(), v.flatten().tolist()):
        if vv < 0.18:
            names.append("black")
        elif ss < 0.22:
            names.append("white" if vv > 0.65 else "black" if vv < 0.3 else "grey")
        elif (hh < 50 or hh >= 340) and vv < 0.45:
            names.append("brown")
        elif hh < 15 or hh >= 340:
            names.append("pink" if ss < 0.5 and vv > 0.6 else "red")
        elif hh < 40:
            names.append("orange")
        elif hh < 68:
            names.append("yellow")
        elif hh < 165:
            names.append("green")
        elif hh < 255:
            names.append("blue")
        elif hh < 290:
            names.append("purple")
        else:
            names.append("pink")
    return names


def _most_common(words: Sequence[str], exclude=()) -> str:
    counts: Dict[str, int] = {}
    for w in words:
        if w not in exclude:
            counts[w] = counts.get(w, 0) + 1
    return max(counts, key=counts.get) if counts else ""


def measure(x: torch.Tensor) -> Dict[str, str]:
    """Colours of one image ``[3, H, W]`` in [-1, 1]: ``flower`` (dominant, leaves and grey
    left out), ``center`` (the middle ninth) and ``background`` (green/blue when they fill a
    third of the picture)."""
    small = torch.nn.functional.interpolate(x[None].float(), size=(24, 24), mode="area")[0]
    words = colour_words(small)
    centre = colour_words(small[:, 8:16, 8:16])
    flower = _most_common(words, exclude=("green", "grey", "black", "blue"))
    middle = _most_common(centre, exclude=("green", "grey"))
    frac = {w: words.count(w) / len(words) for w in ("green", "blue")}
    background = max(frac, key=frac.get) if max(frac.values()) > 0.33 else ""
    return {"flower": flower, "center": middle, "background": background}


def captions_for(cls: str, attrs: Dict[str, str]) -> List[str]:
    """Every caption variant for one image (training draws one per step)."""
    noun, nouns = class_noun(cls), class_noun(cls, plural=True)
    colour, centre, bg = attrs.get("flower"), attrs.get("center"), attrs.get("background")
    caps = [ZERO_SHOT_TEMPLATE.format(noun), f"a {noun}", f"{nouns}", f"a picture of {nouns}"]
    if colour:
        caps += [f"a {colour} {noun}", f"a photo of a {colour} {noun}", f"a {colour} flower"]
        # A class with a known centre says that one (the middle ninth often misses it).
        if centre and centre != colour and not CLASS_LOOKS.get(cls, Looks()).centre:
            caps += [f"a {colour} {noun} with a {centre} center",
                     f"a {colour} flower with a {centre} center"]
    if bg:
        leaves = "green leaves" if bg == "green" else "a blue sky"
        caps += [f"a {noun} in front of {leaves}"]
    return list(dict.fromkeys(caps + described(cls, colour)))     # each caption once


def described(cls: str, measured: str = "") -> List[str]:
    """Captions in the words people use for the class (:data:`CLASS_LOOKS`), in its usual
    colours (or the measured one where the class has no usual colour)."""
    looks = CLASS_LOOKS.get(cls)
    if looks is None:
        return []
    noun = class_noun(cls)
    colours = looks.colours or ((measured,) if measured else ())
    caps = []
    for colour in colours:
        shaped = f"{looks.shape} {colour}".strip()
        caps += [f"a {shaped} flower", f"a {shaped} {noun}"]
        if looks.centre:
            caps += [f"a {shaped} flower with {looks.centre}",
                     f"a {shaped} {noun} with {looks.centre}"]
        if looks.bud:
            caps += [f"a {colour} {noun} bud", f"a {colour} flower bud"]
    if looks.bud:
        caps += [f"a {noun} bud"]
    if looks.centre:
        caps += [f"a {noun} with {looks.centre}"]
    return caps


def image_captions(images: torch.Tensor, classes: Sequence[str], labels: torch.Tensor,
                   ) -> List[List[str]]:
    """Caption variants for each image of a batch ``[N, 3, H, W]`` in [-1, 1]."""
    return [captions_for(classes[int(k)], measure(img)) for img, k in zip(images, labels)]


def pick(captions: List[List[str]], rng: random.Random) -> List[str]:
    """One caption per image, drawn at random."""
    return [rng.choice(c) for c in captions]
