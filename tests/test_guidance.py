"""Lab 04: the context U-Nets, the guidance formula and the guidance explorer."""
import pytest
import torch

from labutils import DDPM, GUIDANCE_WEIGHTS, UNet, count_parameters
from labutils.diffusion import guided_noise
from labutils.interactive.guidance import (guidance_explorer, guided_samples, one_hot_context,
                                plot_guidance_grid)

CLASSES = ["daisy", "sunflowers", "roses"]


def tiny_unet(c_dim=3, T=20):
    torch.manual_seed(0)
    return UNet(T, 3, 8, down_chs=(32, 32, 64), t_embed_dim=8, c_embed_dim=c_dim).eval()


def test_flowers_unet_size_and_forward_shape():
    model = UNet(400, 3, 32, down_chs=(256, 256, 512), t_embed_dim=8, c_embed_dim=3)
    assert count_parameters(model) == 44_509_443
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 399])
    c = torch.eye(3)[:2]
    with torch.no_grad():
        assert model(x, t, c, torch.ones_like(c)).shape == (2, 3, 32, 32)


def test_fmnist_context_unet_size():
    assert count_parameters(UNet(150, 1, 16, (64, 64, 128), 8, 10)) == 2_002_561


def test_dropped_context_is_ignored_and_kept_context_matters():
    model = tiny_unet()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 5, 9])
    daisy, rose = torch.eye(3)[[0, 0, 0]], torch.eye(3)[[2, 2, 2]]
    zeros = torch.zeros_like(daisy)
    with torch.no_grad():
        assert torch.equal(model(x, t, daisy, zeros), model(x, t, rose, zeros))
        assert not torch.allclose(model(x, t, daisy, torch.ones_like(daisy)),
                                  model(x, t, rose, torch.ones_like(rose)))
    with pytest.raises(TypeError, match="context"):
        model(x, t)


def test_guidance_weight_mixes_kept_and_dropped_estimates():
    model = tiny_unet()
    x, t, c = torch.randn(2, 3, 8, 8), torch.tensor([4, 4]), torch.eye(3)[:2]
    with torch.no_grad():
        keep = model(x, t, c, torch.ones_like(c))
        drop = model(x, t, c, torch.zeros_like(c))
        for w in (0.0, -1.0, 2.0):
            e = guided_noise(model, x, t, c, torch.full((2, 1, 1, 1), w))
            assert torch.allclose(e, (1 + w) * keep - w * drop, atol=1e-5)


def test_one_hot_context():
    context = one_hot_context(CLASSES)
    assert context(["roses", "daisy"]).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="tulips"):
        context(["tulips"])


def test_guided_samples_shape_and_bad_n():
    model, ddpm = tiny_unet(), DDPM.linear(20).respaced(3)
    out = guided_samples(model, ddpm, one_hot_context(CLASSES), "roses", 1.0, 4, (3, 8, 8))
    assert out.shape == (4, 3, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        guided_samples(model, ddpm, one_hot_context(CLASSES), "roses", 1.0, 0, (3, 8, 8))


def test_plot_guidance_grid_checks_its_shape(tmp_path):
    with pytest.raises(ValueError, match="7 weights x 3"):
        plot_guidance_grid(torch.zeros(20, 3, 8, 8), CLASSES)
    plot_guidance_grid(torch.zeros(21, 3, 8, 8), CLASSES, save_path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0


def test_explorer_draws_the_static_grid_and_samples_on_click(tmp_path):
    model, ddpm = tiny_unet(), DDPM.linear(20).respaced(2)
    path = tmp_path / "static.png"
    box = guidance_explorer(model, ddpm, CLASSES, one_hot_context(CLASSES), (3, 8, 8),
                            n_samples=2, save_path=path)
    assert path.stat().st_size > 0  # the static grid, sampled fresh (no grid= given)
    (choice, weight, button), picture, caption = box.children[0].children, *box.children[1:]
    assert list(choice.options) == CLASSES and list(weight.options) == list(GUIDANCE_WEIGHTS)
    choice.value, weight.value = "sunflowers", 2.0
    assert picture.value == b""
    button.click()
    assert picture.value[:4] == b"\x89PNG" and "sunflowers" in caption.value
    assert not model.training  # sampling left the model's mode as it was


def test_explorer_reuses_a_given_grid_without_widgets(tmp_path):
    class NoCalls(torch.nn.Module):
        def forward(self, *args):
            raise AssertionError("the static grid was given: no sampling expected")
    grid = torch.rand(len(GUIDANCE_WEIGHTS) * 3, 3, 8, 8) * 2 - 1
    out = guidance_explorer(NoCalls(), DDPM.linear(5), CLASSES, one_hot_context(CLASSES),
                            (3, 8, 8), grid=grid, widgets=False, save_path=tmp_path / "s.png")
    assert out is None and (tmp_path / "s.png").exists()
