"""An exponential moving average (EMA) of a model's weights, for sampling.

After every optimiser step ``shadow = d * shadow + (1 - d) * weights`` for every floating-point
parameter and buffer (integer buffers, e.g. BatchNorm's counters, are copied), with the
warm-up-aware decay ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (counted from 0): early
on the average follows the weights closely instead of remembering the random initialisation.

The state (:meth:`EMA.state_dict`: the decay, the update count and the shadow tensors) goes into
every checkpoint and is restored on resume, so a resumed run ends with exactly the EMA weights of
an uninterrupted one. Samplers use the EMA weights by default (``--no-ema`` compares).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional

import torch

DEFAULT_DECAY = 0.999


class EMA:
    """The moving average of ``model``'s state (a copy, on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float = DEFAULT_DECAY, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().clone()
                                                for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        state = model.state_dict()
        floats_s, floats_m = [], []
        for k, v in state.items():
            s = self.shadow[k]
            if s.is_floating_point():
                floats_s.append(s)
                floats_m.append(v.detach().to(s.dtype))
            else:
                s.copy_(v)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_m, 1.0 - d)   # s += (1 - d) * (m - s)
        self.updates += 1

    def on_step(self, model: torch.nn.Module) -> Callable[..., None]:
        """A hook for ``labutils.train(on_step=...)``: update the average after every step."""
        return lambda step, epoch, loss: self.update(model)

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:3]
            raise ValueError(f"EMA state does not fit this model (missing e.g. {missing})")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.updates = int(state["updates"])
        for k, v in shadow.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Inside the block ``model`` holds the EMA weights; its own come back afterwards."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(saved)


def load_for_sampling(model: torch.nn.Module, state: Dict, use_ema: Optional[bool] = None) -> str:
    """Load a checkpoint's weights into ``model``: the EMA ones when the checkpoint has them and
    ``use_ema`` is not False. Returns ``"ema"`` or ``"raw"``; ``use_ema=True`` on a checkpoint
    without EMA is an error."""
    from .config import ConfigError
    ema = state.get("ema")
    if use_ema and ema is None:
        raise ConfigError("this checkpoint holds no EMA weights (trained before EMA, or with "
                          "--ema-decay 0): drop --ema or use --no-ema")
    if ema is not None and use_ema is not False:
        model.load_state_dict(ema["shadow"])
        return "ema"
    model.load_state_dict(state["model"])
    return "raw"
