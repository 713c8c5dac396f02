"""State dicts saved from the course's own model classes, loaded into labutils' models.

The course wraps the layers of most blocks in a ``.model`` Sequential (``GELUConvBlock``,
``DownBlock``, the lab 01/02 ``DownBlock`` and ``UpBlock``), names the conv of a
``RearrangePoolBlock`` ``.conv``, and writes the lab 01/02 Conv-BatchNorm-ReLU layers flat
into their Sequential. labutils' blocks hold the same layers without those wrappers, so the
same weights have other names, e.g.

    course (UNet_utils.UNet)                labutils (models.UNet)
    down0.conv1.model.0.weight              down0.conv1.0.weight
    down1.model.2.conv.model.1.weight       down1.2.1.1.weight
    up0.1.model.0.weight                    up0.1.0.weight

    course (lab 01/02 notebook UNet)        labutils (models.BasicUNet)
    down1.model.3.weight                    down1.1.0.weight
    up1.model.4.running_mean                up1.model.1.1.running_mean
    out.3.weight                            out.1.weight

:func:`course_key_map` derives the course name of every parameter and buffer from the
model's own module tree. ``UNet`` and ``BasicUNet`` register a load hook, so
``model.load_state_dict(course_state_dict)`` just works: a state dict in the course's layout
(also with ``torch.compile``'s ``_orig_mod.`` prefix, and lab 03's notebook names
``temb_1``/``temb_2`` for ``t_emb1``/``t_emb2``) is renamed on the way in; one in labutils'
layout is left alone. :func:`from_course_state_dict` and :func:`to_course_state_dict` do the
conversion explicitly, e.g. to hand a labutils model back to the course's code.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from .blocks import (BasicDownBlock, BasicUpBlock, ConvBNReLU, DownBlock, GELUConvBlock,
                     RearrangePoolBlock)

COMPILE_PREFIX = "_orig_mod."   # what torch.compile puts before every key


def _own(module: nn.Module, ours: str, course: str, out: Dict[str, str]) -> None:
    for name, _ in list(module.named_parameters(recurse=False)) + \
            list(module.named_buffers(recurse=False)):
        out[ours + name] = course + name


def _flat(seq: nn.Module, ours: str, course: str, out: Dict[str, str]) -> None:
    """The course writes Conv, BatchNorm, ReLU flat where labutils groups them (ConvBNReLU)."""
    k = 0
    for name, child in seq.named_children():
        parts = child.named_children() if isinstance(child, ConvBNReLU) else [(None, child)]
        for sub, leaf in parts:
            path = f"{ours}{name}." + (f"{sub}." if sub is not None else "")
            _walk(leaf, path, f"{course}{k}.", out)
            k += 1


def _walk(module: nn.Module, ours: str, course: str, out: Dict[str, str]) -> None:
    _own(module, ours, course, out)
    if isinstance(module, (GELUConvBlock, DownBlock)):      # course: layers in .model
        for name, child in module.named_children():
            _walk(child, f"{ours}{name}.", f"{course}model.{name}.", out)
    elif isinstance(module, RearrangePoolBlock):             # course: .rearrange, .conv
        _walk(module[1], f"{ours}1.", f"{course}conv.", out)
    elif isinstance(module, BasicDownBlock):
        _flat(module, ours, f"{course}model.", out)
    elif isinstance(module, BasicUpBlock):
        _flat(module.model, f"{ours}model.", f"{course}model.", out)
    elif getattr(module, "course_flat_children", ()):   # BasicUNet: Sequentials kept flat
        for name, child in module.named_children():
            if name in module.course_flat_children:
                _flat(child, f"{ours}{name}.", f"{course}{name}.", out)
            else:
                _walk(child, f"{ours}{name}.", f"{course}{name}.", out)
    else:
        for name, child in module.named_children():
            _walk(child, f"{ours}{name}.", f"{course}{name}.", out)


def course_key_map(model: nn.Module) -> Dict[str, str]:
    """``{labutils key: course key}`` for every entry of ``model.state_dict()``."""
    out: Dict[str, str] = {}
    _walk(model, "", "", out)
    missing = set(model.state_dict()) - set(out)
    if missing:  # a module this map does not know: fail loudly rather than half-convert
        raise RuntimeError(f"no course name for {sorted(missing)[:3]}")
    return out


def _aliases(model: nn.Module) -> Dict[str, str]:
    """Other course names of the same weights: lab 03's notebook U-Net says temb_1, temb_2."""
    return dict(getattr(model, "course_aliases", {}))


def _course_to_ours(model: nn.Module) -> Dict[str, str]:
    mapping = {course: ours for ours, course in course_key_map(model).items()}
    for alias, name in _aliases(model).items():
        for course, ours in list(mapping.items()):
            if course.startswith(name):
                mapping[alias + course[len(name):]] = ours
    return mapping


def is_course_layout(keys, model: nn.Module) -> bool:
    """Whether ``keys`` (relative to ``model``, compile prefix removed) use the course's names.

    Decided for the whole dict: some names mean different weights in the two layouts (the
    lab 01/02 ``out.1.weight`` is a BatchNorm in the course, the last conv in labutils).
    """
    ours = set(course_key_map(model))
    keys = {k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k for k in keys}
    course_names = set(_course_to_ours(model))
    return not (keys & (ours - course_names)) and bool(keys & (course_names - ours))


def from_course_state_dict(state_dict: Mapping[str, torch.Tensor],
                           model: nn.Module) -> Dict[str, torch.Tensor]:
    """A course-layout state dict (``torch.compile``'s prefix allowed) in ``model``'s names.

    Keys the map does not know are kept as they are, so ``load_state_dict(strict=True)``
    still names them."""
    mapping = _course_to_ours(model)
    out = {}
    for key, value in state_dict.items():
        k = key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key
        out[mapping.get(k, k)] = value
    return out


def to_course_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` under the course's names (for the course's own classes)."""
    mapping = course_key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
               unexpected_keys, error_msgs) -> None:
    """Rename a course-layout state dict in place, before ``load_state_dict`` reads it."""
    mine = [k for k in state_dict if k.startswith(prefix)]
    relative = [k[len(prefix):] for k in mine]
    if not is_course_layout(relative, module):
        return
    values = {k[len(prefix):]: state_dict.pop(k) for k in mine}
    for key, value in from_course_state_dict(values, module).items():
        state_dict[prefix + key] = value


def register_course_loading(model: nn.Module) -> None:
    """Let ``model.load_state_dict`` accept the course's layout too (see module docstring)."""
    model.register_load_state_dict_pre_hook(_load_hook)
