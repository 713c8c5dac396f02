"""A trained run, opened in a notebook: ``model = load_run(RUN, settings)``.

``RUN`` is what ``labutils train LAB ... --out RUN`` made (the folder: its newest readable
checkpoint; or one checkpoint file), or a state dict saved from the course's own notebook
(``torch.save(model.state_dict(), path)``, the course's layer names or labutils'). The model
comes back built as the run trained it (the course's U-Net or the laptop one), with the EMA
weights where the checkpoint has them, in eval mode on the device: a notebook then draws its
grids, explorers, GIF and numbers from it instead of training again.

It refuses, with one sentence saying why, a run of another lab, weights of another width than
the lab's models, another number of diffusion steps T, and (lab 05) weights trained with
another CLIP than the one loaded. Everything is read with ``weights_only=True``.

It lives with the job tools, beside :mod:`.checkpoint` whose finding and reading it reuses
(the course library below must not import the tools).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..config import ConfigError, LabSettings, get_device, lab_settings
from ..ema import load_for_sampling
from ..labs import REGISTRY, LabSpec, get_spec
from ..models.compat import COMPILE_PREFIX, from_course_state_dict, is_course_layout
from .checkpoint import CheckpointError, find_checkpoint

VARIANTS = ("course", "laptop")


def _read(source: Path) -> Tuple[Path, Dict, bool]:
    """``(path, state, is_labutils_checkpoint)``: a run folder or checkpoint file through
    :func:`find_checkpoint`, else a plain state dict of tensors (the course's save)."""
    if not source.exists():
        raise ConfigError(f"{source}: no such run folder or checkpoint file")
    try:
        path, state, _ = find_checkpoint(source, "load_run")
        return Path(path), state, True
    except CheckpointError as err:
        if source.is_dir() or "not a labutils checkpoint" not in str(err):
            raise ConfigError(str(err)) from None
    obj = torch.load(source, map_location="cpu", weights_only=True)   # loaded once above: safe
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj
            and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ConfigError(f"{source}: neither a labutils checkpoint nor a state dict of tensors "
                          "(torch.save(model.state_dict(), path))")
    return source, {"model": obj}, False


def _shapes(spec: LabSpec, settings: LabSettings, variant: str) -> Dict[str, torch.Size]:
    """Parameter and buffer shapes of ``spec``'s ``variant`` model, built without memory."""
    with torch.device("meta"):
        model = spec.build_model(settings, variant)
    return {k: v.shape for k, v in model.state_dict().items()}


def _variants(spec: LabSpec) -> List[str]:
    return [v for v in VARIANTS if v == "course" or spec.laptop_model_args is not None]


def _mismatch(weights: Dict[str, torch.Tensor], shapes: Dict[str, torch.Size]) -> Optional[str]:
    """None when ``weights`` fit ``shapes`` exactly, else the first difference in words."""
    for key, shape in shapes.items():
        if key not in weights:
            return f"it has no {key}"
        if weights[key].shape != shape:
            return f"{key} is {list(weights[key].shape)} there, {list(shape)} here"
    extra = sorted(set(weights) - set(shapes))
    return f"it has {extra[0]}, which this model has not" if extra else None


def _as_ours(weights: Dict[str, torch.Tensor], spec: LabSpec, settings: LabSettings):
    """The state dict in labutils' names (the course's layout and compile prefix undone)."""
    with torch.device("meta"):
        model = spec.build_model(settings, "course")
    plain = {k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k: v
             for k, v in weights.items()}
    return from_course_state_dict(plain, model) if is_course_layout(plain, model) else plain


def _which_model(source: Path, weights: Dict[str, torch.Tensor], spec: LabSpec,
                 settings: LabSettings) -> str:
    """The variant of ``spec`` whose shapes ``weights`` have; else a ConfigError naming what
    they do fit (another lab's model) or how they differ."""
    ours = _as_ours(weights, spec, settings)
    why = {}
    for variant in _variants(spec):
        why[variant] = _mismatch(ours, _shapes(spec, settings, variant))
        if why[variant] is None:
            return variant
    for other in REGISTRY.values():       # another lab's model? say which
        if other.name == spec.name or other.model is not spec.model:
            continue
        other_settings = lab_settings(other.name, settings.profile)
        for variant in _variants(other):
            if _mismatch(_as_ours(weights, other, other_settings),
                         _shapes(other, other_settings, variant)) is None:
                raise ConfigError(f"{source}: these are the weights of lab {other.name}'s "
                                  f"{variant} model, not of {spec.name}'s: wrong lab")
    sizes = "; ".join(f"{v} model ({spec._variant(v)[1]:,} parameters): {why[v]}" for v in why)
    raise ConfigError(f"{source}: these weights do not fit lab {spec.name}'s models (wrong "
                      f"width or size): {sizes}")


def _check_clip(source: Path, state: Dict, encoder, spec: LabSpec, labutils_format: bool) -> None:
    if spec.conditioning != "clip-text":
        return
    if encoder is None:
        raise ConfigError(f"lab {spec.name} is prompted through CLIP: pass encoder= (the CLIP "
                          "the notebook loaded) so that its weights can be checked")
    trained = state.get("clip")
    if trained and trained["fingerprint"] != encoder.fingerprint:
        raise ConfigError(
            f"{source}: this model was trained with CLIP {trained['model_id']} (weights sha256 "
            f"{trained['fingerprint'][:12]}), but {encoder.model_id} (sha256 "
            f"{encoder.fingerprint[:12]}) is loaded: wrong CLIP; load the same weights "
            "(load_clip(<name or file>))")
    if not labutils_format:
        print(f"load_run: {source.name} records no CLIP: assumed trained with "
              f"{encoder.model_id}")


def load_run(source, settings: LabSettings, device=None, *, encoder=None,
             ema: Optional[bool] = None) -> torch.nn.Module:
    """The trained model of lab ``settings.lab`` from ``source`` (a run folder, a checkpoint
    file or a course-format state dict), on ``device`` (default: the settings' best), in eval
    mode. ``encoder``: lab 05's loaded CLIP, checked against the one the run trained with.
    ``ema``: None uses the EMA weights where present, False the raw ones. A
    :class:`ConfigError` says why a run does not fit (wrong lab, width, T or CLIP)."""
    source = Path(source).expanduser()
    spec = get_spec(settings.lab)
    path, state, labutils_format = _read(source)
    if labutils_format:
        trained = state["settings"]
        if trained["lab"] != spec.name:
            raise ConfigError(f"{path}: a run of lab {trained['lab']}, not {spec.name}: wrong "
                              "lab (give this notebook a run of its own lab)")
        variant = trained.get("model", "course")
        # The weights, not only the record, must be a model of this lab (and say which).
        found = _which_model(path, state["model"], spec, settings)
        if found != variant:
            raise ConfigError(f"{path}: the checkpoint says {variant} model, its weights are "
                              f"the {found} one")
        if trained.get("T") != settings.T:
            raise ConfigError(f"{path}: trained with T = {trained.get('T')} diffusion steps, "
                              f"this lab samples with T = {settings.T}")
    else:
        if ema:
            raise ConfigError(f"{path}: a plain state dict holds no EMA weights")
        variant = _which_model(path, state["model"], spec, settings)
    _check_clip(path, state, encoder, spec, labutils_format)
    model = spec.build_model(dataclasses.replace(settings, model=variant))
    which = load_for_sampling(model, state, ema) if labutils_format else "raw"
    if not labutils_format:
        model.load_state_dict(state["model"])   # UNet renames the course's layout itself
    device = get_device(device)
    step = f"step {state['step']}, " if labutils_format else ""
    print(f"load_run: {spec.name} from {path} ({step}{which} weights): "
          f"{spec.describe_model(dataclasses.replace(settings, model=variant))}")
    return model.to(device).eval()
