"""The DDPM schedule and samplers against their closed forms."""
import pytest
import torch

from labutils import DDPM, UNet, get_context_mask, linear_beta_schedule, sample_w
from labutils.diffusion import forward_trajectory, guided_noise

T = 150


@pytest.fixture
def ddpm():
    return DDPM.linear(T)


def test_schedule_is_the_course():
    B = linear_beta_schedule(T)
    assert B[0].item() == pytest.approx(1e-4) and B[-1].item() == pytest.approx(0.02)
    ddpm = DDPM(B)
    assert torch.allclose(ddpm.a_bar, torch.cumprod(1 - B, 0))
    with pytest.raises(ValueError):
        linear_beta_schedule(0)


@pytest.mark.parametrize("t", [0, 40, 149])
def test_q_matches_closed_form(ddpm, t):
    torch.manual_seed(0)
    n = 20_000
    x_0 = torch.linspace(-1, 1, 8).reshape(1, 1, 2, 4)
    x_t, noise = ddpm.q(x_0.expand(n, -1, -1, -1), torch.full((n,), t))
    a_bar = ddpm.a_bar[t]
    assert torch.allclose(x_t.mean(0), a_bar.sqrt() * x_0[0], atol=0.03)
    assert torch.allclose(x_t.var(0), (1 - a_bar).expand(1, 2, 4), atol=0.04)
    # The returned noise is the noise that was used.
    assert torch.allclose(x_t, a_bar.sqrt() * x_0 + (1 - a_bar).sqrt() * noise, atol=1e-6)


def test_q_uses_each_samples_own_step(ddpm):
    x_0 = torch.ones(2, 1, 4, 4)
    t = torch.tensor([0, 149])
    torch.manual_seed(1)
    x_t, noise = ddpm.q(x_0, t)
    expected = torch.stack([ddpm.sqrt_a_bar[i] * x_0[k] + ddpm.sqrt_one_minus_a_bar[i] * noise[k]
                            for k, i in enumerate(t)])
    assert torch.allclose(x_t, expected)


def test_recursive_forward_matches_q_marginals(ddpm):
    torch.manual_seed(2)
    x_0 = torch.full((20_000,), 0.5)
    xs = forward_trajectory(ddpm, x_0, recursive=True)
    assert xs.shape == (T, 20_000)
    for t in (10, 75, 149):
        assert xs[t].mean().item() == pytest.approx(0.5 * ddpm.sqrt_a_bar[t].item(), abs=0.02)
        assert xs[t].var().item() == pytest.approx(1 - ddpm.a_bar[t].item(), abs=0.03)
    skip = forward_trajectory(ddpm, torch.zeros(1, 4, 4))
    assert skip.shape == (T, 1, 4, 4)


def _reverse_mean(ddpm, x_t, t, e_t):
    return (x_t - (1 - ddpm.a[t]) / torch.sqrt(1 - ddpm.a_bar[t]) * e_t) / torch.sqrt(ddpm.a[t])


def test_reverse_q_at_zero_returns_the_mean(ddpm):
    x_t, e_t = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = torch.zeros(4, dtype=torch.long)
    first, second = ddpm.reverse_q(x_t, t, e_t), ddpm.reverse_q(x_t, t, e_t)
    assert torch.equal(first, second)
    assert torch.allclose(first, _reverse_mean(ddpm, x_t, 0, e_t), atol=1e-6)


def test_reverse_q_adds_noise_of_variance_b_t_minus_1(ddpm):
    torch.manual_seed(3)
    t = 100
    x_t, e_t = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    n = 20_000
    out = ddpm.reverse_q(x_t.expand(n, -1, -1, -1), torch.full((n,), t), e_t)
    mean = _reverse_mean(ddpm, x_t, t, e_t)[0]
    assert torch.allclose(out.mean(0), mean, atol=0.005)
    assert out.std(0).mean().item() == pytest.approx(ddpm.B[t - 1].sqrt().item(), rel=0.03)


def test_respaced_keeps_a_bar_at_kept_steps(ddpm):
    short = ddpm.respaced(10)
    assert short.T == 10
    kept = short.model_t
    assert kept[0].item() == 0 and kept[-1].item() == T - 1
    assert torch.all(kept[1:] > kept[:-1])
    assert torch.allclose(short.a_bar, ddpm.a_bar[kept], rtol=1e-5)
    assert ddpm.respaced(T) is ddpm and ddpm.respaced(500) is ddpm
    with pytest.raises(ValueError):
        ddpm.respaced(0)


def test_sample_calls_the_model_with_training_timesteps(ddpm):
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    short = ddpm.respaced(5)
    x_0, store = short.sample(model, (2, 1, 4, 4), store_every=1)
    assert x_0.shape == (2, 1, 4, 4) and len(store) == 5
    assert seen == short.model_t.flip(0).tolist()


def test_context_mask_drop_rate_and_one_hot():
    torch.manual_seed(4)
    labels = torch.randint(0, 10, (20_000,))
    c, mask = get_context_mask(labels, 0.1, n_classes=10)
    assert c.shape == mask.shape == (20_000, 10)
    assert torch.equal(c.argmax(1), labels) and torch.all(c.sum(1) == 1)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(0.9, abs=0.01)
    embeddings = torch.randn(1000, 512)
    c, mask = get_context_mask(embeddings, 0.5)
    assert torch.equal(c, embeddings) and mask.mean().item() == pytest.approx(0.5, abs=0.01)


def test_context_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="n_classes"):
        get_context_mask(torch.tensor([1, 2]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        get_context_mask(torch.tensor([3, 10]), 0.1, n_classes=10)
    with pytest.raises(ValueError, match="drop_prob"):
        get_context_mask(torch.tensor([1]), 1.5, n_classes=10)


@pytest.fixture
def small_guided_model():
    torch.manual_seed(5)
    return UNet(10, 1, 8, (32, 32, 32), t_embed_dim=8, c_embed_dim=3).eval()


def test_guided_noise_with_w_zero_is_the_conditional_prediction(small_guided_model):
    model = small_guided_model
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9]), torch.eye(3)
    with torch.no_grad():
        keep = model(x, t, c, torch.ones_like(c))
        drop = model(x, t, c, torch.zeros_like(c))
        assert not torch.allclose(keep, drop)          # the context matters
        w0 = guided_noise(model, x, t, c, torch.zeros(3, 1, 1, 1))
        w2 = guided_noise(model, x, t, c, torch.full((3, 1, 1, 1), 2.0))
    assert torch.allclose(w0, keep, atol=1e-5)
    assert torch.allclose(w2, 3 * keep - 2 * drop, atol=1e-4)


def test_sample_w_shapes(small_guided_model):
    ddpm = DDPM.linear(10)
    c = torch.eye(3)
    x_0, store = sample_w(small_guided_model, ddpm, (1, 8, 8), 10, c, "cpu", w_tests=[0.0, 1.0])
    assert x_0.shape == (6, 1, 8, 8)
    assert store.shape == (10, 6, 1, 8, 8)      # every step is among the last 10
    assert torch.equal(store[-1], x_0)
    x_0, store = sample_w(small_guided_model, ddpm.respaced(4), (1, 8, 8), 10, c, "cpu",
                          w_tests=[0.5])
    assert x_0.shape == (3, 1, 8, 8) and store.shape == (4, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="does not match"):
        sample_w(small_guided_model, ddpm, (1, 8, 8), 150, c, "cpu")


def test_samplers_run_the_model_in_eval_mode_and_restore_its_mode(ddpm):
    modes = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, *context):
            modes.append(self.training)
            return torch.zeros_like(x)

    model = Recorder().train()
    ddpm.respaced(3).sample(model, (1, 1, 4, 4))
    short = ddpm.respaced(3)
    sample_w(model, short, (1, 4, 4), short.T, torch.eye(2), "cpu", w_tests=[0.0])
    assert len(modes) == 6 and not any(modes)   # BatchNorm would use running statistics
    assert model.training                        # and training can go on afterwards
