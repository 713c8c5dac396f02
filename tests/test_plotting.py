"""Pictures: GIFs with the right frames, grids with the right size, the q explorer and its stand-in."""
import numpy as np
import torch
from PIL import Image

from labutils import DDPM, make_grid, save_animation, to_image
from labutils.plotting import trajectory_frames
from labutils.interactive.forward import plot_q_steps, q_explorer, q_images


def test_save_animation_writes_every_frame(tmp_path):
    # Frames that differ, so the GIF writer cannot merge them.
    frames = [torch.full((1, 8, 8), v) for v in torch.linspace(-1, 1, 7)]
    path = save_animation(frames, tmp_path / "sub" / "anim.gif", interval=50)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 7
        assert gif.size == (8, 8)


def test_save_animation_rejects_no_frames(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="at least one frame"):
        save_animation([], tmp_path / "empty.gif")


def test_trajectory_frames_to_gif(tmp_path):
    store = torch.rand(5, 6, 1, 4, 4) * 2 - 1          # 5 frames of 6 images
    frames = trajectory_frames(store, ncols=3, scale=2)
    assert len(frames) == 5
    # 3 columns x 2 rows of 4 px images with 1 px padding, scaled by 2.
    assert frames[0].size == ((3 * 5 + 1) * 2, (2 * 5 + 1) * 2)
    with Image.open(save_animation(frames, tmp_path / "t.gif")) as gif:
        assert gif.n_frames == 5


def test_to_image_maps_range():
    x = torch.tensor([[[-1.0, 0.0, 1.0]]])
    assert np.asarray(to_image(x)).tolist() == [[0, 128, 255]]


def test_make_grid_places_images():
    imgs = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    grid = make_grid(imgs, ncols=2, pad=1)
    assert grid.size == (7, 4)
    assert grid.getpixel((1, 1)) == 0 and grid.getpixel((4, 1)) == 255
    assert grid.getpixel((0, 0)) == 255   # padding is white


def test_q_images_fixed_noise_and_extremes():
    ddpm = DDPM.linear(150)
    x_0 = torch.rand(3, 1, 8, 8) * 2 - 1
    a = q_images(ddpm, x_0, 40, seed=3)
    assert torch.equal(a, q_images(ddpm, x_0, 40, seed=3))
    # Same noise at every t: x_t - sqrt(a_bar) x_0 scales with sqrt(1 - a_bar).
    b = q_images(ddpm, x_0, 100, seed=3)
    noise_a = (a - ddpm.sqrt_a_bar[40] * x_0) / ddpm.sqrt_one_minus_a_bar[40]
    noise_b = (b - ddpm.sqrt_a_bar[100] * x_0) / ddpm.sqrt_one_minus_a_bar[100]
    assert torch.allclose(noise_a, noise_b, atol=1e-4)
    import pytest
    with pytest.raises(ValueError, match="t must lie"):
        q_images(ddpm, x_0, 150)


def test_q_explorer_slider_redraws_and_static_figure_saves(tmp_path):
    ddpm = DDPM.linear(20)
    x_0 = torch.rand(2, 1, 8, 8) * 2 - 1
    box = q_explorer(ddpm, x_0)
    slider, picture, caption = box.children
    assert (slider.min, slider.max) == (0, 19)
    first = picture.value
    slider.value = 19
    assert picture.value != first and "t = 19" in caption.value
    plot_q_steps(ddpm, x_0, steps=[0, 10, 19], save_path=tmp_path / "q.png")
    with Image.open(tmp_path / "q.png") as png:
        assert png.width > 100
