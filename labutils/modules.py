"""Two helpers over any ``torch.nn.Module``, used by models, samplers, CLIP and the tools alike.

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
