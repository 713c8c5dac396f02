"""DDIM and the sampler table: exact on an oracle, deterministic, wired into labs and the CLI."""
import pytest
import torch

from labutils.config import ConfigError, lab_settings
from labutils.diffusion import DDIM, DDPM, SAMPLERS, default_eta, make_sampler, sample_w
from labutils.labs import Lab

T = 150


def oracle(ddpm: DDPM, x_star: torch.Tensor):
    """The exact noise predictor for data that is the single image ``x_star``: given x_t at
    training step t, the noise is (x_t - sqrt(a_bar_t) x*) / sqrt(1 - a_bar_t)."""
    def model(x_t, t, *args):
        t = t.long()
        a = ddpm.a_bar[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x_star) / (1 - a).sqrt()
    return model


@pytest.mark.parametrize("steps", [1, 10, 50, T])
def test_ddim_lands_on_the_data_with_an_exact_model(steps):
    # Every DDIM step predicts x_0 from the noise estimate; with the oracle that is x* at once,
    # and the model must be called with the *training* timesteps (model_t) to get it right.
    ddpm = DDPM.linear(T)
    x_star = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)
    torch.manual_seed(0)
    x_0, _ = ddpm.ddim(steps).sample(oracle(ddpm, x_star), (3, 1, 4, 4))
    assert torch.allclose(x_0, x_star.expand(3, -1, -1, -1), atol=1e-4)


def test_ddim_is_deterministic_and_uses_no_randomness_after_the_start():
    ddpm = DDPM.linear(T)
    model = oracle(ddpm, torch.zeros(1, 1, 4, 4))
    sampler = ddpm.ddim(20, eta=0.0)
    torch.manual_seed(1)
    a, _ = sampler.sample(lambda x, t: model(x, t) + 0.3, (2, 1, 4, 4))
    after_a = torch.rand(1)
    torch.manual_seed(1)
    b, _ = sampler.sample(lambda x, t: model(x, t) + 0.3, (2, 1, 4, 4))
    assert torch.equal(a, b)
    torch.manual_seed(1)
    torch.randn(2, 1, 4, 4)          # the starting noise only
    assert torch.equal(torch.rand(1), after_a)


def test_ddim_eta_adds_noise_but_never_at_the_last_step():
    ddpm = DDPM.linear(T)
    x_star = torch.full((1, 1, 4, 4), 0.5)
    # An imperfect model whose x_0 predictions depend on x_t: injected noise changes the end.
    model = lambda x, t: 0.8 * oracle(ddpm, x_star)(x, t)   # noqa: E731
    outs = []
    for seed in (0, 1):
        torch.manual_seed(0)
        x_T = torch.randn(2, 1, 4, 4)
        sampler = ddpm.ddim(10, eta=1.0)
        torch.manual_seed(seed)
        x = x_T
        for i in range(sampler.T - 1, -1, -1):
            t = torch.full((2,), i)
            x = sampler.reverse_q(x, t, model(x, sampler.model_t[t]))
        outs.append(x)
    assert not torch.allclose(outs[0], outs[1])                  # eta = 1 is stochastic
    sampler = ddpm.ddim(10, eta=1.0)
    t0 = torch.zeros(2, dtype=torch.long)
    x1 = torch.randn(2, 1, 4, 4)
    e = model(x1, sampler.model_t[t0])
    assert torch.equal(sampler.reverse_q(x1, t0, e), sampler.reverse_q(x1, t0, e))   # sigma 0


def test_ddim_clips_its_x0_prediction_to_the_data_range():
    ddpm = DDPM.linear(T)
    far = torch.full((1, 1, 2, 2), 3.0)       # an "image" outside [-1, 1]
    torch.manual_seed(0)
    clipped, _ = ddpm.ddim(10).sample(oracle(ddpm, far), (1, 1, 2, 2))
    assert torch.allclose(clipped, torch.ones_like(clipped), atol=1e-4)
    free = DDIM(ddpm.respaced(10).B, model_t=ddpm.respaced(10).model_t, clip_x0=False)
    torch.manual_seed(0)
    unclipped, _ = free.sample(oracle(ddpm, far), (1, 1, 2, 2))
    assert torch.allclose(unclipped, far, atol=1e-3)


def test_ddim_is_deterministic_by_default_only_where_the_schedule_ends_in_noise():
    # T = 150 (labs 02-04) keeps a_bar_T = 0.22 of the signal: deterministic DDIM from pure
    # noise draws badly there (README); T = 400 (the flowers labs) ends at 0.017.
    assert default_eta(DDPM.linear(150)) == 1.0 and DDPM.linear(150).ddim(50).eta == 1.0
    assert default_eta(DDPM.linear(400)) == 0.0 and DDPM.linear(400).ddim(50).eta == 0.0
    assert DDPM.linear(150).ddim(50, eta=0.0).eta == 0.0
    assert make_sampler(DDPM.linear(400), "ddim", 25).eta == 0.0


def test_ddim_keeps_the_marginals_of_the_steps_it_keeps():
    ddpm = DDPM.linear(T)
    short = ddpm.ddim(10)
    assert isinstance(short, DDIM) and short.T == 10
    assert torch.allclose(short.a_bar, ddpm.a_bar[short.model_t])
    assert short.a_bar_prev[0] == 1 and torch.allclose(short.a_bar_prev[1:], short.a_bar[:-1])
    assert ddpm.ddim().T == T and torch.equal(ddpm.ddim().model_t, torch.arange(T))
    assert isinstance(ddpm.ddim(10).respaced(5), DDIM)


def test_ddim_drives_guided_sampling():
    from labutils import UNet
    torch.manual_seed(0)
    model = UNet(T, 1, 8, (32, 32, 32), t_embed_dim=8, c_embed_dim=3)
    c = torch.eye(3)
    x, store = sample_w(model, DDPM.linear(T).ddim(4), (1, 8, 8), T, c, "cpu", [0.0, 2.0],
                        store_freq=2)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1 + 1e-5
    assert len(store) == 4          # every step is among "the last 10"


def test_sampler_table_and_its_errors():
    ddpm = DDPM.linear(T)
    assert set(SAMPLERS) == {"ddpm", "ddim"}
    assert make_sampler(ddpm, "ddpm") is ddpm
    assert make_sampler(ddpm, "ddpm", 10).T == 10 and not isinstance(
        make_sampler(ddpm, "ddpm", 10), DDIM)
    assert make_sampler(ddpm, "ddim", 25, eta=0.5).eta == 0.5
    with pytest.raises(ValueError, match="valid samplers: ddpm, ddim"):
        make_sampler(ddpm, "euler")
    with pytest.raises(ValueError, match="DDIM sampler only"):
        make_sampler(ddpm, "ddpm", 10, eta=0.5)
    with pytest.raises(ValueError, match="eta must lie in"):
        ddpm.ddim(10, eta=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        make_sampler(ddpm, "ddim", 0)


def test_lab_sampler_reads_the_settings_and_reports_bad_choices():
    lab = Lab(lab_settings("fmnist-cfg", "ci"), "cpu")
    assert lab.sampler().T == lab.settings.sample_steps and not isinstance(lab.sampler(), DDIM)
    ddim = lab.sampler(50, "ddim")
    assert isinstance(ddim, DDIM) and ddim.T == 50
    with pytest.raises(ConfigError, match="unknown sampler"):
        lab.sampler(10, "nope")


def test_lab_picture_with_ddim():
    lab = Lab(lab_settings("fmnist-cfg", "ci"), "cpu")
    torch.manual_seed(0)
    model = lab.build_model()
    torch.manual_seed(0)
    a = lab.sample(model, classes=["Bag"], weights=[1.0], steps=3, sampler="ddim")
    torch.manual_seed(0)
    b = lab.sample(model, classes=["Bag"], weights=[1.0], steps=3, sampler="ddim")
    assert a.images.shape == (1, 1, 16, 16) and torch.equal(a.images, b.images)
