"""The course's models: exact parameter counts (the strongest fidelity check) and the time embedding."""
import math

import pytest
import torch

from labutils import BasicUNet, SinusoidalPositionEmbedBlock, UNet, count_parameters

# (lab, constructor, parameters the course prints)
COURSE_MODELS = [
    ("01", lambda: BasicUNet(1, 16, (16, 32, 64)), 234_977),
    ("02", lambda: BasicUNet(1, 16, (16, 32, 64), T=150), 240_385),
    ("03", lambda: UNet(150, 1, 16, (64, 64, 128), 8, None), 1_979_777),
    ("04A", lambda: UNet(150, 1, 16, (64, 64, 128), 8, 10), 2_002_561),
    ("04B", lambda: UNet(400, 3, 32, (256, 256, 512), 8, 3), 44_509_443),
    ("05", lambda: UNet(400, 3, 32, (256, 256, 512), 8, 512), 44_900_355),
    ("06", lambda: UNet(150, 1, 28, (64, 64, 128), 8, 10), 2_547_457),
]
# The flowers labs' laptop variants (labs.py: trained under the quick profile; not the course's).
LAPTOP_MODELS = [
    ("04B", lambda: UNet(400, 3, 32, (32, 64, 128), 8, 3), 2_565_315),
    ("05", lambda: UNet(400, 3, 32, (32, 64, 128), 8, 512), 2_663_043),
]


@pytest.mark.parametrize("lab,build,expected", COURSE_MODELS, ids=[m[0] for m in COURSE_MODELS])
def test_parameter_count_matches_course(lab, build, expected):
    assert count_parameters(build()) == expected


@pytest.mark.parametrize("lab,build,expected", LAPTOP_MODELS, ids=[m[0] for m in LAPTOP_MODELS])
def test_parameter_count_of_laptop_variants(lab, build, expected):
    assert count_parameters(build()) == expected


def test_count_parameters_skips_frozen_weights():
    model = BasicUNet(1, 16, (16, 32, 64))
    model.out.requires_grad_(False)
    frozen = sum(p.numel() for p in model.out.parameters())
    assert frozen > 0
    assert count_parameters(model) == 234_977 - frozen


def test_models_keep_image_shape():
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0, 149])
    assert BasicUNet(1, 16, (16, 32, 64))(x).shape == x.shape
    assert BasicUNet(1, 16, (16, 32, 64), T=150)(x, t).shape == x.shape
    assert UNet(150, 1, 16, (64, 64, 128), 8, None)(x, t).shape == x.shape
    c = torch.eye(10)[:2]
    assert UNet(150, 1, 16, (64, 64, 128), 8, 10)(x, t, c, torch.ones_like(c)).shape == x.shape


def test_time_aware_models_need_t():
    with pytest.raises(TypeError, match="model\\(x, t\\)"):
        BasicUNet(1, 16, (16, 32, 64), T=150)(torch.randn(1, 1, 16, 16))


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(150, 1, 18, (64, 64, 128), 8)


def test_sinusoidal_embedding_shape_and_values():
    dim = 8
    embed = SinusoidalPositionEmbedBlock(dim)
    t = torch.tensor([0.0, 0.25, 1.0])
    e = embed(t)
    assert e.shape == (3, dim)
    half = dim // 2
    # t = 0: every sine is 0, every cosine 1.
    assert torch.allclose(e[0, :half], torch.zeros(half))
    assert torch.allclose(e[0, half:], torch.ones(half))
    # Frequencies fall geometrically from 1 to 1/10000 across the half.
    freqs = torch.tensor([10000 ** (-k / (half - 1)) for k in range(half)])
    assert torch.allclose(e[2, :half], torch.sin(freqs), atol=1e-6)
    assert torch.allclose(e[1, half:], torch.cos(0.25 * freqs), atol=1e-6)
    assert math.isclose(float(e[2, 0]), math.sin(1.0), rel_tol=1e-6)


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="even"):
        SinusoidalPositionEmbedBlock(7)
