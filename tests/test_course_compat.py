"""labutils as a drop-in for the course's utils: the course's own call patterns, row by row of
the "Course names -> labutils" table of docs/course-map.md.

Each test calls labutils the way the course's notebooks call ``other_utils``, ``ddpm_utils`` and
``UNet_utils`` (positional arguments, float timesteps and labels, lists of frames, ...). The
"course layout" models below rebuild only the course's *module names* (its state-dict layout),
so that a state dict saved from the course's classes can be loaded and checked here.
"""
import importlib
import math
import re
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import labutils  # noqa: E402
from labutils import diffusion, models, plotting  # noqa: E402
from labutils.data import fashion_mnist  # noqa: E402
from labutils.models import (BasicUNet, DownBlock, EmbedBlock, GELUConvBlock,  # noqa: E402
                             RearrangePoolBlock, ResidualConvBlock, SinusoidalPositionEmbedBlock,
                             UNet, UpBlock, course_key_map, from_course_state_dict,
                             to_course_state_dict)

ROOT = Path(__file__).resolve().parents[1]
COURSE_MAP = ROOT / "docs" / "course-map.md"


def _grid(x, nrow):
    torchvision = pytest.importorskip("torchvision")
    return torchvision.utils.make_grid(x, nrow=nrow)


# --- the table itself ----------------------------------------------------------------------------

def _table_rows():
    text = COURSE_MAP.read_text()
    section = text.split("## Course names -> labutils", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]   # no header
    return [tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in rows]


def _names(cell):
    """The backticked names of a cell, without module prefixes and call arguments."""
    return [re.sub(r"\(.*", "", n).split(".")[-1] for n in re.findall(r"`([^`]+)`", cell)]


# Each row of the table (keyed by the first name of its left column) and the tests that
# exercise the course's call patterns for it. A row without an entry here fails.
ROW_TESTS = {
    "show_tensor_image": ["test_show_tensor_image_takes_a_batch_an_image_a_2d_tensor_and_a_list",
                          "test_to_image_of_a_make_grid_and_to_pil_false",
                          "test_plot_generated_images_takes_the_course_pair",
                          "test_save_animation_with_2d_tensors_as_lab_02_stores_them",
                          "test_save_animation_with_grids_as_labs_04_and_05"],
    "load_fashionMNIST": ["test_load_fashionMNIST_with_a_torchvision_transform",
                          "test_load_transformed_fashionMNIST_as_the_course_calls_it"],
    "DDPM": ["test_ddpm_q_get_loss_reverse_q_with_the_course_arguments",
             "test_sample_images_with_context_and_axis_on", "test_sample_w_as_lab_05_calls_it",
             "test_get_loss_with_the_course_order_of_arguments"],
    "GELUConvBlock": ["test_blocks_take_the_course_constructor_arguments"],
    "UNet": ["test_unet_defaults_to_the_course_context_width"],
    "UNet()": ["test_basic_unet_is_the_course_notebook_unet"],
    "get_context_mask": ["test_get_context_mask_course_patterns",
                         "test_get_context_mask_ambiguous_input_is_a_clear_error"],
    "get_context_mask(c, drop_prob)": ["test_get_context_mask_course_patterns"],
    "state_dict()": ["test_course_layout_names_are_the_course_names",
                     "test_unet_loads_a_course_state_dict_and_computes_the_same",
                     "test_a_compiled_course_models_state_dict_loads_too",
                     "test_basic_unet_loads_the_lab_01_02_notebook_layout",
                     "test_our_own_layout_still_loads_and_round_trips_to_the_course"],
}


def _row_key(course_cell):
    first = re.findall(r"`([^`]+)`", course_cell)[0]
    if first.startswith("UNet()") or first.startswith("model.state_dict()"):
        return first.split(".")[-1] if "state_dict" in first else "UNet()"
    if first.startswith("get_context_mask("):
        return "get_context_mask(c, drop_prob)"
    return re.sub(r"\(.*", "", first).split(".")[-1]


def test_every_row_of_the_table_has_tests_and_its_names_exist():
    rows = _table_rows()
    assert len(rows) >= 9, "docs/course-map.md's course-names table lost rows"
    keys = [_row_key(course) for course, _ in rows]
    assert sorted(keys) == sorted(ROW_TESTS), "a table row without tests here, or the reverse"
    for key in keys:
        for name in ROW_TESTS[key]:
            assert callable(globals().get(name)), name
    for course, ours in rows:
        for ref in re.findall(r"`(labutils\.[\w.]+)", ours):     # every labutils name resolves
            _resolve(ref)
        if "same names" in ours:
            module = _resolve(re.search(r"`(labutils[\w.]*)`", ours).group(1))
            for name in _names(course):
                owner = module.DDPM if name in ("q", "get_loss", "reverse_q",
                                                "sample_images") else module
                assert hasattr(owner, name), f"{module.__name__}.{name} missing"


def _resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_everything_in_the_table_is_importable_from_labutils():
    for name in ["show_tensor_image", "to_image", "plot_generated_images", "save_animation",
                 "load_fashionMNIST", "load_transformed_fashionMNIST", "DDPM", "sample_w",
                 "GELUConvBlock", "RearrangePoolBlock", "DownBlock", "UpBlock",
                 "SinusoidalPositionEmbedBlock", "EmbedBlock", "ResidualConvBlock", "UNet",
                 "BasicUNet", "get_context_mask"]:
        assert hasattr(labutils, name), name
    for name in ["q", "get_loss", "reverse_q", "sample_images"]:
        assert callable(getattr(labutils.DDPM, name)), name


# --- other_utils: pictures -------------------------------------------------------------------------

def test_show_tensor_image_takes_a_batch_an_image_a_2d_tensor_and_a_list():
    torch.manual_seed(0)
    batch = torch.rand(4, 3, 8, 8) * 2 - 1
    for arg in (batch, batch[0], batch[0, 0], [batch[0]], [_grid(batch, 2)]):
        fig = plt.figure()
        plotting.show_tensor_image(arg)          # the course draws on the current axes
        assert len(plt.gca().images) == 1
        plt.close(fig)
    # The course's labs 04/05: show_tensor_image([grid]) draws the whole grid.
    fig = plt.figure()
    plotting.show_tensor_image([_grid(batch, 2)])
    assert plt.gca().images[0].get_array().shape[:2] == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        plotting.show_tensor_image([])


def test_to_image_of_a_make_grid_and_to_pil_false():
    x = torch.rand(6, 1, 4, 4) * 2 - 1
    pil = plotting.to_image(_grid(x, 3))               # lab 04: to_image(make_grid(x, nrow))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB"
    t = plotting.to_image(torch.tensor([[[-2.0, 0.0, 3.0]]]), to_pil=False)
    assert t.tolist() == [[[0.0, 0.5, 1.0]]]          # scaled to [0, 1] and clamped
    assert plotting.to_image(torch.zeros(4, 5)).size == (5, 4)   # a 2-D grey image
    with pytest.raises(ValueError, match="one image"):
        plotting.to_image(torch.zeros(2, 1, 4, 4))


def test_plot_generated_images_takes_the_course_pair():
    noise, result = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    plotting.plot_generated_images(noise, result)
    plt.close("all")


def test_save_animation_with_2d_tensors_as_lab_02_stores_them(tmp_path):
    """Lab 02: ``xs.append(torch.squeeze(x_t).cpu())`` then ``save_animation(xs, gif_name)``."""
    torch.manual_seed(0)
    x_t, xs = torch.rand(1, 1, 16, 16) * 2 - 1, []
    for t in range(5):
        x_t = math.sqrt(1 - 0.1) * x_t + math.sqrt(0.1) * torch.randn_like(x_t)
        xs.append(torch.squeeze(x_t).cpu())
    gif = tmp_path / "forward_diffusion.gif"
    plotting.save_animation(xs, str(gif))              # the course passes a str
    with Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (16, 16)


def test_save_animation_with_grids_as_labs_04_and_05(tmp_path):
    store = torch.rand(3, 6, 3, 8, 8) * 2 - 1        # x_t_store of sample_w
    grids = [plotting.to_image(_grid(x.cpu(), 3)) for x in store]
    plotting.save_animation(grids, tmp_path / "flowers.gif")
    with Image.open(tmp_path / "flowers.gif") as im:
        assert im.n_frames == 3


# --- other_utils: data -----------------------------------------------------------------------------

def test_load_fashionMNIST_with_a_torchvision_transform():
    transforms = pytest.importorskip("torchvision.transforms")
    tf = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor(),
                             transforms.RandomHorizontalFlip(),
                             transforms.Lambda(lambda t: t * 2 - 1)])
    test_set = fashion_mnist.load_fashionMNIST(tf, train=False)
    img, label = test_set[0]
    assert img.shape == (1, 16, 16) and -1 <= img.min() and img.max() <= 1
    assert 0 <= label < 10 and len(test_set) == 10_000


def test_load_transformed_fashionMNIST_as_the_course_calls_it():
    data, dataloader = fashion_mnist.load_transformed_fashionMNIST(16, 128)
    assert len(data) == 70_000 and len(dataloader) == 546      # train + test, drop_last
    x_0 = data[0][0]                                            # lab 02: data[0][0]
    assert x_0.shape == (1, 16, 16)
    batch = next(iter(dataloader))
    assert batch[0].shape == (128, 1, 16, 16) and batch[1].shape == (128,)


# --- ddpm_utils ------------------------------------------------------------------------------------

def _tiny_cfg_unet(T=10, c_dim=10):
    torch.manual_seed(0)
    return UNet(T, 1, 8, down_chs=(32, 32, 32), t_embed_dim=8, c_embed_dim=c_dim)


def test_ddpm_q_get_loss_reverse_q_with_the_course_arguments():
    T = 10
    B = torch.linspace(0.0001, 0.02, T)
    ddpm = diffusion.DDPM(B, "cpu")                     # DDPM(B, device), positional
    assert ddpm.T == T and torch.allclose(ddpm.a_bar, torch.cumprod(1 - B, 0))
    x_0 = torch.rand(4, 1, 8, 8) * 2 - 1
    # Lab 02: q(x_0, torch.Tensor([t]).type(torch.int64)); lab 04 trains with float t.
    x_t, noise = ddpm.q(x_0[:1], torch.Tensor([3]).type(torch.int64))
    assert torch.allclose(x_t, ddpm.sqrt_a_bar[3] * x_0[:1] + ddpm.sqrt_one_minus_a_bar[3] * noise)
    model = _tiny_cfg_unet(T)
    t = torch.randint(0, T, (4,)).float()
    c_hot, c_mask = diffusion.get_context_mask(torch.tensor([0, 1, 2, 3]), 0.1, 10)
    loss = ddpm.get_loss(model, x_0, t, c_hot, c_mask)
    assert loss.dim() == 0 and torch.isfinite(loss)
    # reverse_q at t = 0 returns the mean, with no noise.
    e_t = torch.randn_like(x_0)
    t0 = torch.full((4,), 0.0)
    out = ddpm.reverse_q(x_0, t0, e_t)
    assert torch.allclose(out, ddpm.sqrt_a_inv[0] * (x_0 - ddpm.pred_noise_coeff[0] * e_t))
    assert torch.equal(out, ddpm.reverse_q(x_0, t0, e_t))


def test_sample_images_with_context_and_axis_on():
    """Lab 04: ``ddpm.sample_images(model, IMG_CH, IMG_SIZE, ncols, c_hot, c_mask, axis_on=True)``."""
    T = 10
    ddpm = diffusion.DDPM(torch.linspace(0.0001, 0.02, T), "cpu")
    model = _tiny_cfg_unet(T)
    c_hot, c_mask = diffusion.get_context_mask(torch.Tensor([3]), 0, 10)
    x = ddpm.sample_images(model, 1, 8, 3, c_hot, c_mask, axis_on=True)
    assert x.shape == (1, 1, 8, 8)
    plt.close("all")


def test_sample_w_as_lab_05_calls_it():
    """``ddpm_utils.sample_w(model, ddpm, INPUT_SIZE, T, c, device)``, default w_tests."""
    T = 10
    ddpm = diffusion.DDPM(torch.linspace(0.0001, 0.02, T), "cpu")
    model = _tiny_cfg_unet(T, c_dim=16)
    c = torch.randn(3, 16)                          # e.g. text encodings
    x_0, store = diffusion.sample_w(model, ddpm, (1, 8, 8), T, c, "cpu")
    assert x_0.shape == (7 * 3, 1, 8, 8)
    assert store.shape[1:] == (21, 1, 8, 8) and len(store) == 10   # i % 10 == 0 or i < 10


# --- the context mask ------------------------------------------------------------------------------

def test_get_context_mask_course_patterns():
    # Lab 04 training: integer labels from the data loader.
    c_hot, c_mask = diffusion.get_context_mask(torch.tensor([1, 9]), 0.1, 10)
    assert c_hot.tolist()[0] == [0, 1] + [0] * 8 and c_mask.shape == (2, 10)
    # Lab 04 preview: get_context_mask(torch.Tensor([c]), 0): float labels become one-hot.
    c_hot, c_mask = diffusion.get_context_mask(torch.Tensor([3]), 0, n_classes=10)
    assert c_hot.tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]
    assert torch.equal(c_mask, torch.ones(1, 10))
    # UNet_utils.get_context_mask(c, drop_prob, num_classes): the course's keyword.
    c_hot, _ = diffusion.get_context_mask(torch.arange(3), 0, num_classes=3)
    assert torch.equal(c_hot, torch.eye(3))
    # Lab 05: CLIP encodings [N, 512] stay as they are; the course's mask-only variant.
    emb = torch.randn(4, 512)
    c, c_mask = diffusion.get_context_mask(emb, 0.1)
    assert torch.equal(c, emb) and c_mask.shape == emb.shape


def test_get_context_mask_ambiguous_input_is_a_clear_error():
    with pytest.raises(ValueError, match="ambiguous"):
        diffusion.get_context_mask(torch.Tensor([3]), 0.1)           # labels or one vector?
    with pytest.raises(ValueError, match="whole numbers"):
        diffusion.get_context_mask(torch.Tensor([2.5]), 0.1, 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        diffusion.get_context_mask(torch.Tensor([10]), 0.1, 10)
    with pytest.raises(ValueError, match="n_classes=10"):
        diffusion.get_context_mask(torch.randn(2, 512), 0.1, 10)
    with pytest.raises(ValueError, match="disagree"):
        diffusion.get_context_mask(torch.tensor([1]), 0.1, n_classes=10, num_classes=3)
    with pytest.raises(ValueError, match="n_classes"):
        diffusion.get_context_mask(torch.tensor([1]), 0.1)
    # Labels passed straight to the model (no one-hot) say what to do.
    with pytest.raises(ValueError, match="get_context_mask"):
        _tiny_cfg_unet()(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([1., 2.]),
                         torch.ones(2))


# --- UNet_utils: blocks ------------------------------------------------------------------------------

def test_blocks_take_the_course_constructor_arguments():
    x = torch.randn(2, 32, 8, 8)
    assert GELUConvBlock(32, 64, 8)(x).shape == (2, 64, 8, 8)
    assert RearrangePoolBlock(32, 8)(x).shape == (2, 32, 4, 4)
    assert DownBlock(32, 64, 32)(x).shape == (2, 64, 4, 4)
    assert UpBlock(32, 16, 8)(x, x).shape == (2, 16, 16, 16)
    assert ResidualConvBlock(32, 64, 8)(x).shape == (2, 64, 8, 8)
    assert EmbedBlock(8, 64)(torch.randn(2, 8)).shape == (2, 64, 1, 1)
    # SinusoidalPositionEmbedBlock(dim)(t) with t = t.float() / T, the course's formula.
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = SinusoidalPositionEmbedBlock(8)(t)
    freqs = torch.exp(torch.arange(4) * -(math.log(10000) / 3))
    assert torch.allclose(emb, torch.cat(((t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()), 1))
    # RearrangePool is space-to-depth: no pixel is lost before the conv.
    assert torch.equal(RearrangePoolBlock(2, 1)[0](torch.arange(16.).reshape(1, 1, 4, 4)).sum(),
                       torch.tensor(120.))


def test_unet_defaults_to_the_course_context_width():
    model = UNet(150, 1, 16)                     # UNet_utils.UNet(T, img_ch, img_size)
    assert model.c_embed_dim == 10
    assert labutils.count_parameters(model) == 2_002_561
    assert labutils.count_parameters(UNet(150, 1, 16, c_embed_dim=None)) == 1_979_777
    # forward(x, t, c, c_mask) with sample_w's t of shape [n, 1, 1, 1] and float t.
    x, c = torch.randn(2, 1, 16, 16), torch.eye(10)[:2]
    assert model(x, torch.tensor([[[[3]]], [[[7]]]]), c, torch.ones_like(c)).shape == x.shape
    assert model(x, torch.tensor([3.0, 7.0]), c, torch.ones_like(c)).shape == x.shape


# --- loading state dicts saved from the course's own classes ---------------------------------------
# The course's layout, rebuilt from its module names: layers wrapped in `.model` Sequentials,
# RearrangePoolBlock's `.rearrange` and `.conv`, lab 01/02 Conv-BN-ReLU written flat.

class _Wrap(nn.Module):
    """A block whose layers sit in ``self.model`` (the course's GELUConvBlock, DownBlock, ...)."""

    def __init__(self, *layers):
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def _c_gelu(i, o, g):
    return _Wrap(nn.Conv2d(i, o, 3, 1, 1), nn.GroupNorm(g, o), nn.GELU())


class _CPool(nn.Module):
    def __init__(self, c, g):
        super().__init__()
        from einops.layers.torch import Rearrange
        self.rearrange = Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)
        self.conv = _c_gelu(4 * c, c, g)

    def forward(self, x):
        return self.conv(self.rearrange(x))


class _CUp(_Wrap):
    def forward(self, x, skip):
        return self.model(torch.cat((x, skip), 1))


class _CResidual(nn.Module):
    def __init__(self, i, o, g):
        super().__init__()
        self.conv1, self.conv2 = _c_gelu(i, o, g), _c_gelu(o, o, g)

    def forward(self, x):
        x1 = self.conv1(x)
        return x1 + self.conv2(x1)


class _CEmbed(nn.Module):
    def __init__(self, i, e, act=nn.GELU):
        super().__init__()
        self.input_dim = i
        self.model = nn.Sequential(nn.Linear(i, e), act(), nn.Linear(e, e), nn.Unflatten(1, (e, 1, 1)))

    def forward(self, x):
        return self.model(x.view(-1, self.input_dim))


class CourseUNet(nn.Module):
    """The course's UNet_utils.UNet layout (``temb_names=True``: lab 03's notebook names)."""

    def __init__(self, T, img_ch, img_size, down_chs=(64, 64, 128), t_embed_dim=8,
                 c_embed_dim=10, temb_names=False):
        super().__init__()
        self.T, self.temb_names, self.c_embed_dim = T, temb_names, c_embed_dim
        up, lat = down_chs[::-1], img_size // 4
        self.down0 = _CResidual(img_ch, down_chs[0], 8)
        self.down1 = _Wrap(_c_gelu(down_chs[0], down_chs[1], 32), _c_gelu(down_chs[1], down_chs[1], 32),
                           _CPool(down_chs[1], 32))
        self.down2 = _Wrap(_c_gelu(down_chs[1], down_chs[2], 32), _c_gelu(down_chs[2], down_chs[2], 32),
                           _CPool(down_chs[2], 32))
        self.to_vec = nn.Sequential(nn.Flatten(), nn.GELU())
        n = down_chs[2] * lat ** 2
        self.dense_emb = nn.Sequential(nn.Linear(n, down_chs[1]), nn.ReLU(),
                                       nn.Linear(down_chs[1], down_chs[1]), nn.ReLU(),
                                       nn.Linear(down_chs[1], n), nn.ReLU())
        self.sinusoidaltime = SinusoidalPositionEmbedBlock(t_embed_dim)
        names = ("temb_1", "temb_2") if temb_names else ("t_emb1", "t_emb2")
        setattr(self, names[0], _CEmbed(t_embed_dim, up[0]))
        setattr(self, names[1], _CEmbed(t_embed_dim, up[1]))
        if c_embed_dim is not None:
            self.c_embed1, self.c_embed2 = _CEmbed(c_embed_dim, up[0]), _CEmbed(c_embed_dim, up[1])
        self.up0 = nn.Sequential(nn.Unflatten(1, (up[0], lat, lat)), _c_gelu(up[0], up[0], 32))
        self.up1 = _CUp(nn.ConvTranspose2d(2 * up[0], up[1], 2, 2), *[_c_gelu(up[1], up[1], 32) for _ in range(4)])
        self.up2 = _CUp(nn.ConvTranspose2d(2 * up[1], up[2], 2, 2), *[_c_gelu(up[2], up[2], 32) for _ in range(4)])
        self.out = nn.Sequential(nn.Conv2d(2 * up[-1], up[-1], 3, 1, 1), nn.GroupNorm(8, up[-1]),
                                 nn.ReLU(), nn.Conv2d(up[-1], img_ch, 3, 1, 1))

    def forward(self, x, t, c=None, c_mask=None):
        d0 = self.down0(x)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        latent = self.dense_emb(self.to_vec(d2))
        t = self.sinusoidaltime(t.float() / self.T)
        e1, e2 = (self.temb_1, self.temb_2) if self.temb_names else (self.t_emb1, self.t_emb2)
        u0 = self.up0(latent)
        if self.c_embed_dim is None:
            u1 = self.up1(u0 + e1(t), d2)
            u2 = self.up2(u1 + e2(t), d1)
        else:
            c = c * c_mask
            u1 = self.up1(self.c_embed1(c) * u0 + e1(t), d2)
            u2 = self.up2(self.c_embed2(c) * u1 + e2(t), d1)
        return self.out(torch.cat((u2, d0), 1))


def _cbr(i, o):
    return [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU()]


class CourseBasicUNet(nn.Module):
    """Lab 01 (``T=None``) / lab 02 notebook ``UNet()`` layout (Conv, BN, ReLU written flat)."""

    def __init__(self, T=None, img_ch=1, img_size=16, down_chs=(16, 32, 64)):
        super().__init__()
        self.T, up, lat = T, down_chs[::-1], img_size // 4
        self.down0 = nn.Sequential(*_cbr(img_ch, down_chs[0]))
        self.down1 = _Wrap(*_cbr(down_chs[0], down_chs[1]), *_cbr(down_chs[1], down_chs[1])[:], nn.MaxPool2d(2))
        self.down2 = _Wrap(*_cbr(down_chs[1], down_chs[2]), *_cbr(down_chs[2], down_chs[2]), nn.MaxPool2d(2))
        self.to_vec = nn.Sequential(nn.Flatten(), nn.ReLU())
        n = down_chs[2] * lat ** 2
        self.dense_emb = nn.Sequential(nn.Linear(n, down_chs[1]), nn.ReLU(),
                                       nn.Linear(down_chs[1], down_chs[1]), nn.ReLU(),
                                       nn.Linear(down_chs[1], n), nn.ReLU())
        if T is not None:
            self.temb_1, self.temb_2 = _CEmbed(1, up[0], nn.ReLU), _CEmbed(1, up[1], nn.ReLU)
        self.up0 = nn.Sequential(nn.Unflatten(1, (up[0], lat, lat)), *_cbr(up[0], up[0]))
        self.up1 = _CUp(nn.ConvTranspose2d(2 * up[0], up[1], 3, 2, 1, 1), nn.BatchNorm2d(up[1]), nn.ReLU(),
                        *_cbr(up[1], up[1]))
        self.up2 = _CUp(nn.ConvTranspose2d(2 * up[1], up[2], 3, 2, 1, 1), nn.BatchNorm2d(up[2]), nn.ReLU(),
                        *_cbr(up[2], up[2]))
        self.out = nn.Sequential(*_cbr(up[-1], up[-1]), nn.Conv2d(up[-1], img_ch, 3, 1, 1))

    def forward(self, x, t=None):
        d0 = self.down0(x)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        latent = self.to_vec(d2)
        if self.T is None:
            u0 = self.up0(latent)
            return self.out(self.up2(self.up1(u0, d2), d1))
        t = t.float() / self.T
        u0 = self.up0(self.dense_emb(latent))
        u1 = self.up1(u0 + self.temb_1(t), d2)
        return self.out(self.up2(u1 + self.temb_2(t), d1))


def _randomise(model):
    """Every parameter and BatchNorm statistic random, so a misplaced weight shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def test_course_layout_names_are_the_course_names():
    """The example from the issue, and the layouts' key sets match one to one."""
    ours = UNet(150, 1, 16)
    course = CourseUNet(150, 1, 16)
    mapping = course_key_map(ours)
    assert mapping["down0.conv1.1.weight"] == "down0.conv1.model.1.weight"
    assert mapping["down1.2.1.0.weight"] == "down1.model.2.conv.model.0.weight"
    assert set(mapping.values()) == set(course.state_dict())
    basic = BasicUNet(T=150)
    assert set(course_key_map(basic).values()) == set(CourseBasicUNet(T=150).state_dict())


@pytest.mark.parametrize("kwargs", [dict(c_embed_dim=10), dict(c_embed_dim=3),
                                    dict(c_embed_dim=None, temb_names=True),
                                    dict(c_embed_dim=None)])
def test_unet_loads_a_course_state_dict_and_computes_the_same(kwargs, tmp_path):
    torch.manual_seed(0)
    course = _randomise(CourseUNet(150, 1, 16, (64, 64, 128), 8, **kwargs))
    path = tmp_path / "course.pt"
    torch.save(course.state_dict(), path)                 # saved by the course's code
    ours = UNet(150, 1, 16, (64, 64, 128), 8, kwargs["c_embed_dim"])
    ours.load_state_dict(torch.load(path, weights_only=True))   # strict: every key placed
    ours.eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 70, 149])
    c = torch.eye(kwargs["c_embed_dim"] or 1)[:3] if kwargs["c_embed_dim"] else None
    args = (c, torch.ones_like(c)) if c is not None else ()
    with torch.no_grad():
        assert torch.allclose(ours(x, t, *args), course(x, t, *args), atol=1e-5)


def test_a_compiled_course_models_state_dict_loads_too():
    """The course runs ``torch.compile(model)``: its state dict keys start with ``_orig_mod.``."""
    course = _randomise(CourseUNet(150, 1, 16))
    state = {"_orig_mod." + k: v for k, v in course.state_dict().items()}
    ours = UNet(150, 1, 16)
    ours.load_state_dict(state)
    assert torch.equal(ours.down1[2][1][0].weight, course.down1.model[2].conv.model[0].weight)


@pytest.mark.parametrize("T", [None, 150])
def test_basic_unet_loads_the_lab_01_02_notebook_layout(T):
    course = _randomise(CourseBasicUNet(T))
    ours = BasicUNet(T=T)
    ours.load_state_dict(course.state_dict())
    ours.eval()
    x = torch.randn(2, 1, 16, 16)
    args = (torch.tensor([3, 140]),) if T else ()
    with torch.no_grad():
        assert torch.allclose(ours(x, *args), course(x, *args), atol=1e-5)


def test_our_own_layout_still_loads_and_round_trips_to_the_course():
    a, b = _randomise(UNet(150, 1, 16)), UNet(150, 1, 16)
    b.load_state_dict(a.state_dict())                    # labutils' own checkpoints unchanged
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    course = CourseUNet(150, 1, 16)
    course.load_state_dict(to_course_state_dict(a))      # and back to the course's classes
    assert torch.equal(course.out[3].weight, a.out[3].weight)
    back = from_course_state_dict(course.state_dict(), UNet(150, 1, 16))
    assert set(back) == set(a.state_dict())


def test_a_nested_model_loads_the_course_layout_under_a_prefix():
    """E.g. a wrapper (DDP's ``module.``) around the U-Net: the hook works under any prefix."""
    course = _randomise(CourseUNet(150, 1, 16))
    wrapper = nn.Module()
    wrapper.module = UNet(150, 1, 16)
    wrapper.load_state_dict({"module." + k: v for k, v in course.state_dict().items()})
    assert torch.equal(wrapper.module.up0[1][0].weight, course.up0[1].model[0].weight)


def test_a_wrong_state_dict_is_still_refused():
    course = CourseUNet(150, 1, 16, c_embed_dim=3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        UNet(150, 1, 16).load_state_dict(course.state_dict())


# --- lab 01/02 notebook UNet() -> BasicUNet ----------------------------------------------------------

def test_basic_unet_is_the_course_notebook_unet():
    assert labutils.count_parameters(BasicUNet()) == 234_977          # lab 01 UNet()
    assert labutils.count_parameters(BasicUNet(T=150)) == 240_385     # lab 02 UNet()
    x = torch.randn(2, 1, 16, 16)
    assert BasicUNet()(x).shape == x.shape
    assert BasicUNet(T=150)(x, torch.tensor([1.0, 149.0])).shape == x.shape   # float t


def test_get_loss_with_the_course_order_of_arguments():
    """``F.mse_loss(noise, noise_pred)`` in the course; symmetric, so labutils' order agrees."""
    ddpm = diffusion.DDPM(torch.linspace(0.0001, 0.02, 150), "cpu")
    model = BasicUNet(T=150).eval()
    torch.manual_seed(3)
    x_0, t = torch.rand(2, 1, 16, 16) * 2 - 1, torch.tensor([5, 100])
    loss = ddpm.get_loss(model, x_0, t)
    torch.manual_seed(3)
    x_0, t = torch.rand(2, 1, 16, 16) * 2 - 1, torch.tensor([5, 100])
    x_noisy, noise = ddpm.q(x_0, t)
    assert torch.allclose(loss, F.mse_loss(noise, model(x_noisy, t)))


# --- fidelity: flowers keep their aspect and are cropped per image -----------------------------------

def _photo(path, size, colour_left, colour_right):
    w, h = size
    im = Image.new("RGB", size, colour_left)
    im.paste(colour_right, (w // 2, 0, w, h))
    im.save(path)


def test_flowers_keep_aspect_and_the_random_crop_moves_per_image(tmp_path):
    from labutils.data.flowers import FLOWER_CLASSES, flowers_augment, load_flowers_tensors
    for k, cls in enumerate(FLOWER_CLASSES):
        (tmp_path / cls).mkdir()
        _photo(tmp_path / cls / "wide.png", (96, 64), (255, 0, 0), (0, 0, 255))   # 3:2
        _photo(tmp_path / cls / "tall.png", (64, 96), (0, 255, 0), (0, 255, 0))
        _photo(tmp_path / cls / "square.png", (64, 64), (9, 9, 9), (9, 9, 9))
    square = load_flowers_tensors(16, tmp_path)                    # default: centre squares
    assert square.images.shape == (9, 3, 16, 16)
    data = load_flowers_tensors(16, tmp_path, keep_aspect=True)    # the course's Resize(16)
    assert data.images.shape == (9, 3, 24, 24)                     # shorter edge 16, 3:2 kept
    by_name = {Path(p).stem: i for i, p in enumerate(data.paths) if "daisy" in p}
    wide, tall, sq = (data.images[by_name[n]] for n in ("wide", "tall", "square"))
    assert not torch.isnan(wide[:, :16, :24]).any() and torch.isnan(wide[:, 16:]).all()
    assert not torch.isnan(tall[:, :24, :16]).any() and torch.isnan(tall[:, :, 16:]).all()
    assert torch.isnan(sq[:, 16:]).all() and torch.isnan(sq[:, :, 16:]).all()
    # Crops: always inside the photo (no NaN), and each image at its own place.
    augment = flowers_augment(16)
    torch.manual_seed(0)
    batch = wide.expand(64, -1, -1, -1)
    crops = augment(batch)
    assert crops.shape == (64, 3, 16, 16) and not torch.isnan(crops).any()
    # The amount of red (left half of the photo) tells where each crop sits: it moves.
    red = (crops[:, 0] > 0).float().mean((1, 2))
    assert len(set(red.tolist())) > 3
    assert not torch.isnan(augment(data.images)).any()
    # Course-order labels and the per-image crop under BatchLoader, as the labs train.
    from labutils.data import BatchLoader
    x, y = next(iter(BatchLoader(data, 9, augment=augment)))
    assert x.shape == (9, 3, 16, 16) and not torch.isnan(x).any()


def test_square_photos_decode_as_before(tmp_path):
    from labutils.data.flowers import FLOWER_CLASSES, load_flowers_tensors
    for cls in FLOWER_CLASSES:
        (tmp_path / cls).mkdir()
        _photo(tmp_path / cls / "a.png", (40, 40), (200, 10, 10), (10, 10, 200))
    a = load_flowers_tensors(8, tmp_path).images
    b = load_flowers_tensors(8, tmp_path, keep_aspect=True).images
    assert torch.equal(a, b)


# --- README: "each notebook asserts its Num params" ---------------------------------------------------

EXPECTED_COUNT_ASSERTS = {"01": 1, "02": 1, "03": 1, "04": 2, "05": 1}


@pytest.mark.parametrize("lab", sorted(EXPECTED_COUNT_ASSERTS))
def test_every_lab_notebook_asserts_its_course_parameter_counts(lab):
    import nbformat
    [path] = (ROOT / "notebooks").glob(f"{lab}_*.ipynb")
    code = "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")
    # A bare assert, or (labs that follow notebooks/README.md's lesson rules) a check() that
    # prints what was expected and what came.
    asserts = re.findall(r"^\s*assert count_parameters\((\w+)\) == (\w+)\.params", code, re.M)
    asserts += re.findall(r"^\s*check\(\"[^\"]*\", count_parameters\((\w+)\), (\w+)\.params\b",
                          code, re.M)
    assert len(asserts) >= EXPECTED_COUNT_ASSERTS[lab], f"{path.name}: {asserts}"
    assert "Num params" in code


# --- fidelity: `labutils train` draws sample grids at the course's epochs ------------------------------

def test_train_job_draws_grids_at_epochs_0_5_10_and_the_last():
    """The course: ``if epoch % 5 == 0 or epoch == int(epochs - 1)`` (100 epochs: 0, 5, ..., 95, 99)."""
    from types import SimpleNamespace
    from labutils.tools.train_job import TrainJob
    drawn = []
    job = SimpleNamespace(sample_every=5, settings=SimpleNamespace(epochs=100), draw=drawn.append)
    for epoch in range(100):
        TrainJob.on_epoch_end(job, epoch, step=epoch)
    assert drawn == list(range(0, 100, 5)) + [99]
    drawn.clear()
    job.sample_every = 0                                    # --sample-every 0: none
    for epoch in range(3):
        TrainJob.on_epoch_end(job, epoch, step=epoch)
    assert drawn == []


def test_profiles_keep_the_course_learning_rates():
    """README: a profile never changes an architecture, T or a learning rate."""
    from labutils.config import LABS, PROFILES, lab_settings
    for lab in LABS:
        full = lab_settings(lab, "full")
        for profile in PROFILES:
            s = lab_settings(lab, profile)
            assert (s.T, s.img_size, s.img_ch) == (full.T, full.img_size, full.img_ch), (lab, profile)
            # Only a laptop-width model (quick, flowers labs; docs/profiles.md) may take another lr.
            if s.model == full.model:
                assert s.lr == full.lr, (lab, profile)
