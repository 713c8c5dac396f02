"""The shared training loop: reproducible with a seed, and stops on a NaN before any hook runs."""
import math

import pytest
import torch

from labutils import DDPM, BasicUNet, NonFiniteLossError, seed_everything, train
from labutils.data import BatchLoader, TensorImageDataset
from labutils.training import ddpm_loss, denoising_loss


def _loader(n=32, batch=8, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorImageDataset(torch.rand(n, 1, size, size, generator=g) * 2 - 1,
                              torch.zeros(n).long())
    return BatchLoader(data, batch)


def _run_once(seed):
    seed_everything(seed)
    model = BasicUNet(1, 8, (8, 16, 16), T=150)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    result = train(model, ddpm_loss(DDPM.linear(150)), _loader(), optimizer, 1, progress=False,
                   amp=False)
    return result.losses


def test_seed_everything_repeats_a_run():
    first, second = _run_once(0), _run_once(0)
    assert len(first) == 4
    assert first == second
    assert _run_once(1) != first


def test_training_reduces_denoising_loss():
    seed_everything(0)
    model = BasicUNet(1, 8, (8, 16, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = denoising_loss(lambda x: 0.5 * x + 0.5 * torch.randn_like(x))
    result = train(model, loss, _loader(), optimizer, 3, progress=False, amp=False)
    assert result.step == 12 and result.epoch == 3 and result.images == 12 * 8
    assert sum(result.losses[-3:]) < sum(result.losses[:3])


def test_nan_loss_stops_before_hooks():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook_steps, loss_calls = [], []

    def loss_fn(model, x, y):
        loss_calls.append(x)
        bad = math.nan if len(loss_calls) == 3 else 1.0   # the third step goes wrong
        return model(torch.ones(1, 1)).sum() * 0 + bad

    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(model, loss_fn, _loader(), optimizer, 1, progress=False, amp=False,
              on_step=lambda step, epoch, loss: hook_steps.append(step))
    assert hook_steps == [1, 2]          # no hook saw the NaN step


def test_resume_skips_done_batches_and_stop_request():
    model = torch.nn.Conv2d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = lambda m, x, y: m(x).mean()
    result = train(model, loss, _loader(), optimizer, 2, start_step=5, progress=False, amp=False)
    assert result.step == 8 and len(result.losses) == 3 and result.epoch == 2
    result = train(model, loss, _loader(), optimizer, 2, progress=False, amp=False,
                   should_stop=lambda: True)
    assert result.stopped_early and result.step == 1


def test_train_rejects_bad_arguments():
    model = torch.nn.Conv2d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        train(model, lambda m, x, y: m(x).mean(), _loader(), optimizer, -1, progress=False)


def test_preview_hooks_draw_every_n_steps_and_restore_train_mode(tmp_path):
    from labutils.interactive.previews import denoising_preview, sampling_preview

    seed_everything(0)
    model = BasicUNet(1, 8, (8, 16, 16), T=150)
    sampler = DDPM.linear(150).respaced(3)
    hook = sampling_preview(model, sampler, 2, (2, 1, 8, 8), save_dir=tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, ddpm_loss(DDPM.linear(150)), _loader(), optimizer, 1, progress=False,
          amp=False, on_step=hook)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview_step00002.png",
                                                          "preview_step00004.png"]
    assert model.training
    assert sampling_preview(model, sampler, 0, (2, 1, 8, 8)) is None
    denoiser = BasicUNet(1, 8, (8, 16, 16))
    hook = denoising_preview(denoiser, torch.zeros(3, 1, 8, 8), lambda x: x, 1,
                             save_dir=tmp_path / "d")
    hook(1, 0, 0.5)
    assert (tmp_path / "d" / "preview_step00001.png").is_file() and denoiser.training
