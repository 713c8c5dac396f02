"""The DDPM noise schedule and samplers (the course's ``ddpm_utils``), separate from the models.

``q`` noises a clean image to step ``t`` in one jump; ``reverse_q`` takes one denoising step
given the model's noise estimate; ``sample`` runs the whole reverse chain; ``sample_w`` runs it
with classifier-free guidance for several guidance weights at once.

A sampler is a schedule object with ``T``, ``model_t`` and ``reverse_q``: :class:`DDPM` (the
course's ancestral sampler, optionally ``respaced`` to fewer steps) or :class:`DDIM` (Song et
al., 2021: deterministic by default, so 50 steps do what DDPM needs hundreds for). Both plug
into ``sample`` and ``sample_w`` unchanged; :data:`SAMPLERS` names them for the CLI.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import autocast
from .context import as_context
from .modules import evaluating

GUIDANCE_WEIGHTS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def linear_beta_schedule(T: int, start: float = 1e-4, end: float = 0.02,
                         device=None) -> torch.Tensor:
    """The course's ``B = linspace(1e-4, 0.02, T)``."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    return torch.linspace(start, end, T, device=device)


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped to broadcast against a batch like ``like``."""
    return values[t.reshape(-1).long()].reshape(-1, *([1] * (like.dim() - 1)))


class DDPM:
    """Schedule of a denoising diffusion model: ``DDPM(B, device)``, ``B`` the betas."""

    def __init__(self, B: torch.Tensor, device=None, model_t: Optional[torch.Tensor] = None):
        device = torch.device(device) if device is not None else B.device
        self.device = device
        self.B = B.to(device)
        self.T = len(B)
        # The timestep the model sees at each step of this schedule: the identity, except for
        # a respaced (shortened) sampling schedule, see ``respaced``.
        self.model_t = (torch.arange(self.T, device=device) if model_t is None
                        else model_t.to(device))
        self.a = 1.0 - self.B
        self.a_bar = torch.cumprod(self.a, dim=0)
        self.sqrt_a_bar = torch.sqrt(self.a_bar)
        self.sqrt_one_minus_a_bar = torch.sqrt(1 - self.a_bar)
        self.sqrt_a_inv = torch.sqrt(1 / self.a)
        self.pred_noise_coeff = (1 - self.a) / torch.sqrt(1 - self.a_bar)

    @classmethod
    def linear(cls, T: int, device=None) -> "DDPM":
        return cls(linear_beta_schedule(T), device)

    def respaced(self, n_steps: int) -> "DDPM":
        """A shorter sampling schedule over ``n_steps`` evenly spaced timesteps of this one.

        Same marginals ``a_bar`` at the kept steps, betas recomputed between them (Nichol &
        Dhariwal, 2021). Sampling costs ``n_steps`` model calls instead of ``T``; the model is
        still called with its training timesteps. ``n_steps >= T`` returns ``self``.
        """
        if n_steps >= self.T:
            return self
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        keep = torch.linspace(0, self.T - 1, n_steps, device=self.device).round().long()
        a_bar = self.a_bar[keep]
        prev = torch.cat((torch.ones(1, device=self.device), a_bar[:-1]))
        return self._with_schedule(1 - a_bar / prev, self.model_t[keep])

    def _with_schedule(self, B: torch.Tensor, model_t: torch.Tensor) -> "DDPM":
        """A sampler of this kind over other betas (subclasses keep their own options)."""
        return DDPM(B, self.device, model_t=model_t)

    def ddim(self, n_steps: Optional[int] = None, eta: Optional[float] = None) -> "DDIM":
        """A :class:`DDIM` sampler over ``n_steps`` evenly spaced steps of this schedule
        (default: all of them); ``eta`` defaults to :func:`default_eta` of this schedule."""
        short = self.respaced(n_steps) if n_steps else self
        return DDIM(short.B, self.device, model_t=short.model_t,
                    eta=default_eta(self) if eta is None else eta)

    def timesteps(self, n: int) -> torch.Tensor:
        """``n`` training timesteps drawn uniformly from ``[0, T)``."""
        return torch.randint(0, self.T, (n,), device=self.device)

    def q(self, x_0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Noise ``x_0`` to step ``t`` in one jump: returns ``(x_t, noise)``."""
        noise = torch.randn_like(x_0)
        x_t = (_per_sample(self.sqrt_a_bar, t, x_0) * x_0
               + _per_sample(self.sqrt_one_minus_a_bar, t, x_0) * noise)
        return x_t, noise

    def get_loss(self, model, x_0: torch.Tensor, t: torch.Tensor, *model_args) -> torch.Tensor:
        """MSE between the noise added by ``q`` and the model's estimate of it."""
        x_noisy, noise = self.q(x_0, t)
        noise_pred = model(x_noisy, t, *model_args)
        return F.mse_loss(noise_pred.float(), noise)

    @torch.no_grad()
    def reverse_q(self, x_t: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """One reverse step from ``x_t`` given the noise estimate ``e_t``.

        Where ``t == 0`` it returns the mean; otherwise it adds ``sqrt(B[t-1]) * z`` (decided
        per sample, on the device; ``z`` is drawn for the whole batch either way).
        """
        t = t.reshape(-1).long()
        e_t = e_t.to(x_t.dtype)
        u_t = _per_sample(self.sqrt_a_inv, t, x_t) * (
            x_t - _per_sample(self.pred_noise_coeff, t, x_t) * e_t)
        # No noise at t == 0, decided on the device: reading t back would make the host wait
        # for the GPU at every reverse step.
        noisy = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        sigma = torch.sqrt(_per_sample(self.B, (t - 1).clamp(min=0), x_t)) * noisy
        return u_t + sigma * torch.randn_like(x_t)

    @torch.inference_mode()
    def sample(self, model, shape: Sequence[int], *model_args, store_every: int = 0,
               progress: bool = False, bf16: Optional[bool] = None
               ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the reverse chain from pure noise: ``(x_0, [x_t every store_every steps])``.

        The model runs in eval mode (its previous mode is restored afterwards), under bf16
        autocast where the device has native bf16 (``bf16=`` forces it on or off); the chain
        itself stays in fp32."""
        x_t = torch.randn(tuple(shape), device=self.device)
        store = []
        with evaluating(model):
            for i in _steps(self.T, progress):
                t = torch.full((x_t.shape[0],), i, device=self.device)
                with autocast(self.device, bf16):
                    e_t = model(x_t, self.model_t[t], *model_args)
                x_t = self.reverse_q(x_t, t, e_t)
                if store_every and (i % store_every == 0):
                    store.append(x_t.cpu())
        return x_t, store

    @torch.no_grad()
    def sample_images(self, model, img_ch: int, img_size: int, ncols: int, *model_args,
                      axis_on: bool = False, save_path=None) -> torch.Tensor:
        """The course's figure: one sample denoised from noise, ``ncols`` snapshots of its path."""
        from .plotting import plot_trajectory
        stride = max(1, self.T // ncols)
        x_0, store = self.sample(model, (1, img_ch, img_size, img_size), *model_args,
                                 store_every=stride)
        plot_trajectory(store, axis_on=axis_on, save_path=save_path)
        return x_0


# Deterministic DDIM treats its starting noise as x_T, which is right only when x_T holds almost
# no signal. The course's T = 150 schedule ends at a_bar_T = 0.22 (47% of the signal's amplitude
# left): there deterministic DDIM at 50 steps drew 53.5% recognisable lab-04 samples at w = 1
# where DDPM drew 84%, and eta = 1 drew 82% (README, quality). T = 400 ends at a_bar_T = 0.017.
DETERMINISTIC_MAX_A_BAR_T = 0.05


def default_eta(ddpm: DDPM) -> float:
    """DDIM's default noise for a schedule: 0 (deterministic) when its last ``a_bar`` is below
    :data:`DETERMINISTIC_MAX_A_BAR_T`, else 1 (fresh noise at every step, as DDPM)."""
    return 0.0 if float(ddpm.a_bar[-1]) < DETERMINISTIC_MAX_A_BAR_T else 1.0


class DDIM(DDPM):
    """The DDIM sampler (Song, Meng & Ermon, 2021) over a DDPM schedule, usually a short one.

    Same trained model, same marginals ``a_bar``; each step predicts ``x_0`` from the noise
    estimate and moves to the previous kept step along it. ``eta = 0`` (the default) is
    deterministic: the same starting noise gives the same image; ``eta = 1`` adds as much
    noise as DDPM does. The predicted ``x_0`` is clipped to the data's range [-1, 1] when
    ``clip_x0`` (as diffusers' DDIM does), which keeps large guidance weights in range.
    Build one with ``DDPM.ddim(n_steps, eta)``; without ``eta`` it is deterministic only where
    the schedule ends in (almost) pure noise (:func:`default_eta`).
    """

    def __init__(self, B: torch.Tensor, device=None, model_t: Optional[torch.Tensor] = None,
                 eta: float = 0.0, clip_x0: bool = True):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        super().__init__(B, device, model_t)
        self.eta, self.clip_x0 = float(eta), clip_x0
        self.a_bar_prev = torch.cat((torch.ones(1, device=self.device), self.a_bar[:-1]))

    def _with_schedule(self, B: torch.Tensor, model_t: torch.Tensor) -> "DDIM":
        return DDIM(B, self.device, model_t=model_t, eta=self.eta, clip_x0=self.clip_x0)

    @torch.no_grad()
    def reverse_q(self, x_t: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """One DDIM step from step ``t`` to the kept step before it (to ``x_0`` at ``t == 0``)."""
        t = t.reshape(-1).long()
        e_t = e_t.to(x_t.dtype)
        a_t = _per_sample(self.a_bar, t, x_t)
        a_prev = _per_sample(self.a_bar_prev, t, x_t)
        x_0 = (x_t - torch.sqrt(1 - a_t) * e_t) / torch.sqrt(a_t)
        if self.clip_x0:
            x_0 = x_0.clamp(-1, 1)
            e_t = (x_t - torch.sqrt(a_t) * x_0) / torch.sqrt(1 - a_t)   # consistent with x_0
        x_prev = torch.sqrt(a_prev) * x_0
        if self.eta == 0:
            return x_prev + torch.sqrt(1 - a_prev) * e_t
        # sigma is 0 at the last step (a_prev = 1), so no noise is added to x_0.
        sigma = self.eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        return (x_prev + torch.sqrt((1 - a_prev - sigma ** 2).clamp(min=0)) * e_t
                + sigma * torch.randn_like(x_t))


def _ddpm_sampler(ddpm: DDPM, steps: Optional[int], eta: Optional[float]) -> DDPM:
    if eta:
        raise ValueError("eta applies to the DDIM sampler only (DDPM's noise is fixed)")
    return ddpm.respaced(steps) if steps else ddpm


# The samplers by name (``labutils sample --sampler``): (schedule, steps, eta) -> sampler.
SAMPLERS = {
    "ddpm": _ddpm_sampler,
    "ddim": lambda ddpm, steps, eta: ddpm.ddim(steps, eta),
}


def make_sampler(ddpm: DDPM, kind: str = "ddpm", steps: Optional[int] = None,
                 eta: Optional[float] = None) -> DDPM:
    """The sampler ``kind`` (a key of :data:`SAMPLERS`) over ``steps`` steps of ``ddpm``
    (``eta``: DDIM's noise, default :func:`default_eta`)."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; valid samplers: {', '.join(SAMPLERS)}")
    if steps is not None and steps < 1:
        raise ValueError(f"sampling steps must be at least 1, got {steps}")
    return SAMPLERS[kind](ddpm, steps, eta)


def _steps(T: int, progress: bool) -> Iterable[int]:
    steps = range(T - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm
        return tqdm(steps, desc="sampling", leave=False)
    return steps


# --- classifier-free guidance (labs 04-06) -------------------------------------------------------

def get_context_mask(c: torch.Tensor, drop_prob: float, n_classes: Optional[int] = None, *,
                     num_classes: Optional[int] = None):
    """Context for guided training: ``(context, keep_mask)``.

    Class labels ``[N]`` become one-hot rows ``n_classes`` wide: integer labels, and float
    labels such as the course's ``torch.Tensor([3])`` when ``n_classes`` is given. Float
    context rows ``[N, D]`` (one-hot rows, CLIP embeddings) are used as they are. Anything
    ambiguous is an error (see :func:`labutils.context.as_context`). ``num_classes=`` is the
    course's name for ``n_classes`` (``UNet_utils.get_context_mask(c, drop_prob,
    num_classes)``). The mask keeps each element with probability ``1 - drop_prob`` (the
    course's element-wise Bernoulli mask); the course's lab-05 variant, which returns only
    the mask, is ``get_context_mask(c, drop_prob)[1]``.
    """
    if num_classes is not None:
        if n_classes is not None and n_classes != num_classes:
            raise ValueError(f"n_classes={n_classes} and num_classes={num_classes} disagree; "
                             "pass one of them")
        n_classes = num_classes
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
    c = as_context(c, n_classes)
    c_mask = torch.bernoulli(torch.full_like(c, 1.0 - drop_prob, dtype=torch.float))
    return c, c_mask


def guided_noise(model, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                 w: torch.Tensor) -> torch.Tensor:
    """``(1 + w) * e_keep - w * e_drop`` from one forward pass over a doubled batch."""
    n = x_t.shape[0]
    c2 = torch.cat((c, c))
    c_mask = torch.ones_like(c2)
    c_mask[n:] = 0.0
    e = model(torch.cat((x_t, x_t)), torch.cat((t, t)), c2, c_mask).to(x_t.dtype)
    e_keep, e_drop = e[:n], e[n:]
    return (1 + w) * e_keep - w * e_drop


@torch.inference_mode()
def sample_w(model, ddpm: DDPM, input_size: Sequence[int], T: int, c: torch.Tensor, device,
             w_tests: Optional[Sequence[float]] = None, store_freq: int = 10,
             progress: bool = False, bf16: Optional[bool] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Guided samples for every guidance weight in ``w_tests`` and every context row of ``c``.

    Returns ``(x_0, x_t_store)``: ``x_0`` has ``len(w_tests) * len(c)`` images, w-major (row
    ``i`` of a grid with ``len(c)`` columns is weight ``w_tests[i]``); ``x_t_store`` stacks the
    batch every ``store_freq`` steps and at each of the last 10. ``ddpm`` is any sampler
    (:class:`DDPM`, respaced or not, or :class:`DDIM`); the model runs under bf16 autocast
    where the device has native bf16 (``bf16=`` forces it).
    """
    if w_tests is None:
        w_tests = GUIDANCE_WEIGHTS
    if len(c) == 0 or len(w_tests) == 0:
        raise ValueError("sample_w needs at least one context row and one guidance weight")
    if T not in (ddpm.T, int(ddpm.model_t[-1]) + 1):
        raise ValueError(f"T={T} does not match the schedule ({ddpm.T} steps)")
    T = ddpm.T
    device = torch.device(device)
    n_c = len(c)
    n_samples = len(w_tests) * n_c
    w = torch.tensor(list(w_tests), dtype=torch.float, device=device).repeat_interleave(n_c)
    w = w[:, None, None, None]
    c = c.float().to(device).repeat(len(w_tests), 1)
    x_t = torch.randn(n_samples, *input_size, device=device)
    store = []
    with evaluating(model):
        for i in _steps(T, progress):
            t = torch.full((n_samples,), i, device=device)
            with autocast(device, bf16):
                e_t = guided_noise(model, x_t, ddpm.model_t[t], c, w)
            x_t = ddpm.reverse_q(x_t, t, e_t)
            if i % store_freq == 0 or i < 10:
                store.append(x_t.cpu())
    return x_t, torch.stack(store)


# --- pictures of the forward process (lab 02) -----------------------------------------------------

@torch.no_grad()
def forward_trajectory(ddpm: DDPM, x_0: torch.Tensor, recursive: bool = False) -> torch.Tensor:
    """``x_1 ... x_T`` of one forward run from ``x_0``, stacked: ``[T, *x_0.shape]``.

    ``recursive=True`` adds a little noise step by step, ``x_t = sqrt(1 - B[t]) x_{t-1} +
    sqrt(B[t]) z`` (T updates); otherwise each ``x_t`` jumps straight from ``x_0`` with
    :meth:`DDPM.q`. Both give the same distribution at every step.
    """
    x_0 = x_0.to(ddpm.device)
    if not recursive:
        return torch.stack([ddpm.q(x_0[None], torch.tensor([t], device=ddpm.device))[0][0]
                            for t in range(ddpm.T)])
    xs, x_t = [], x_0
    for t in range(ddpm.T):
        x_t = torch.sqrt(1 - ddpm.B[t]) * x_t + torch.sqrt(ddpm.B[t]) * torch.randn_like(x_t)
        xs.append(x_t)
    return torch.stack(xs)
