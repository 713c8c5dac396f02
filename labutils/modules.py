"""Helpers over any ``torch.nn.Module``, used by models, samplers, CLIP and the tools alike.

They live below :mod:`labutils.models` and :mod:`labutils.diffusion` so that samplers can switch
a model to eval mode without the diffusion code importing the models.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what the course prints as ``Num params``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def evaluating(model):
    """Eval mode (BatchNorm uses its running statistics) and no gradients inside the block;
    the model's previous mode afterwards. Every sampler runs inside it, so callers need not.
    A plain function (anything without ``train``/``eval``) only gets the no-gradient part."""
    if not isinstance(model, nn.Module):
        with torch.no_grad():
            yield model
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` for the training step, falling back to eager where compiling
    fails (no C++ compiler on a node, an unsupported op): dynamo then warns once and runs the
    module as it is. The weights stay shared with ``model``, whose ``state_dict`` (without
    the compiled wrapper's ``_orig_mod.`` prefix) is what checkpoints store."""
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)
