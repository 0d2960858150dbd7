"""Invariance measurement (arXiv:2111.11398): the metric against its definition, the
protocols, the grids and the bad-input messages."""

import math
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from betaweighter.errors import ConfigError, DataError
from betaweighter.evaluate.invariance import (
    ImageSource,
    _sample,
    input_config,
    measure_invariance,
    to_uint8,
)
from betaweighter.evaluate.invariance_table import InvarianceTable
from betaweighter.evaluate.invariance_transforms import (
    TRANSFORMS,
    Geometry,
    parameters,
    transform_batch,
)
from betaweighter.evaluate.whitening import FeatureStats
from betaweighter.models import conv_net

SMALL = {"image_size": 16, "resize": 18, "mean": [0.5] * 3, "std": [0.25] * 3}


def _images(n=24, size=16, seed=0):
    """Smooth random colour images (blurred noise), so that features vary with content."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, size, size, generator=g)
    smooth = TF.gaussian_blur(noise, [5, 5], [1.5, 1.5])
    return (smooth * 255).round().to(torch.uint8)


def _net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return conv_net(width=6, blocks=2).to(dtype).eval()


class Reparametrised(nn.Module):
    """``features(x) = A f(x) + b`` for an invertible A: the same information."""

    def __init__(self, inner, seed=1):
        super().__init__()
        self.inner = inner
        g = torch.Generator().manual_seed(seed)
        d = inner.feature_dim
        a = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d)
        self.register_buffer("a", a)
        self.register_buffer("b", torch.randn(d, generator=g, dtype=torch.float64))

    def features(self, x):
        return self.inner.features(x) @ self.a.T + self.b


class FlipAveraged(nn.Module):
    """Features averaged over an image and its horizontal mirror: exactly flip-invariant."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def features(self, x):
        return (self.inner.features(x) + self.inner.features(torch.flip(x, dims=[-1]))) / 2


class HalfMeans(nn.Module):
    """Two features: the mean of the left and of the right half of channel 0."""

    def features(self, x):
        w = x.shape[-1] // 2
        return torch.stack([x[:, 0, :, :w].mean((1, 2)), x[:, 0, :, w:].mean((1, 2))], 1)


def test_identical_images_score_one():
    # Under the paper protocol the identity parameter stays in the grid: those rows
    # compare an image with an identical copy.
    table = measure_invariance(_net(), _images(), ["rotation", "h_flip", "invert"], k=4,
                               num_images=8, protocol="paper", shrinkage="none", **SMALL)
    identity = [r for r in table.rows if r["param"] in ("0", "off")]
    assert len(identity) == 3
    for row in identity:
        assert row["similarity"] == pytest.approx(1.0, abs=1e-12)
        assert row["distance"] == pytest.approx(0.0, abs=1e-9)
        assert row["count"] == 8
    assert all(r["similarity"] < 0.999 for r in table.rows if r not in identity)


def test_an_invertible_linear_map_of_the_features_leaves_the_scores_unchanged():
    net, images = _net(), _images(40)
    kwargs = dict(transforms=["rotation", "brightness", "h_flip", "translation"], k=4,
                  num_images=10, shrinkage="none", **SMALL)
    plain = measure_invariance(net, images, **kwargs)
    mapped = measure_invariance(Reparametrised(net), images, **kwargs)
    assert len(plain) == len(mapped) > 0
    for a, b in zip(plain.rows, mapped.rows):
        assert a["param"] == b["param"]
        assert b["similarity"] == pytest.approx(a["similarity"], abs=1e-9)
        assert b["distance"] == pytest.approx(a["distance"], rel=1e-8)


def test_exactly_invariant_features_score_one_on_that_transform():
    model = FlipAveraged(_net())
    table = measure_invariance(model, _images(), ["h_flip", "v_flip"], num_images=12,
                               shrinkage="none", **SMALL)
    assert table.similarity("h_flip") == pytest.approx(1.0, abs=1e-12)
    assert table.summary()[0]["distance"] == pytest.approx(0.0, abs=1e-9)
    assert table.similarity("v_flip") < 0.99  # not invariant to what it was not built for


def test_paper_protocol_reproduces_a_hand_computed_value():
    # One 4x4 image: left half 51/255 = 0.2, right half 153/255 = 0.6 in channel 0. With
    # mean 0, std 1 and identity statistics, f0 = (0.2, 0.6) and the flip gives (0.6, 0.2):
    # cos = 2 * 0.12 / 0.40 = 0.6, and the paper averages in the identity (cos 1):
    # (1 + 0.6) / 2 = 0.8. Distance: |f0 - f1| = 0.4 * sqrt(2), averaged with 0.
    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[..., :2], image[..., 2:] = 51, 153
    stats = FeatureStats(np.zeros(2), np.eye(2), count=2)
    common = dict(stats=stats, num_images=3, image_size=4, resize=4, mean=[0.0] * 3,
                  std=[1.0] * 3)
    paper = measure_invariance(HalfMeans(), image, "h_flip", protocol="paper", **common)
    assert [r["param"] for r in paper.rows] == ["off", "on"]
    assert paper.similarity("h_flip") == pytest.approx(0.8, abs=1e-6)  # float32 features
    assert paper.summary()[0]["distance"] == pytest.approx(0.2 * math.sqrt(2), abs=1e-6)
    assert paper.rows[0]["count"] == 3  # drawn three times, with replacement
    v2 = measure_invariance(HalfMeans(), image, "h_flip", protocol="v2", **common)
    assert [r["param"] for r in v2.rows] == ["on"] and v2.rows[0]["count"] == 1
    assert v2.similarity("h_flip") == pytest.approx(0.6, abs=1e-6)


def test_mahalanobis_cosine_matches_the_papers_cholesky_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    stats = FeatureStats.from_features(x, shrinkage="none")
    a, b = rng.normal(size=(2, 6))
    # the original: L = cholesky(inv(np.cov)), cos((mu - a) L, (mu - b) L)
    chol = np.linalg.cholesky(np.linalg.inv(np.cov(x, rowvar=False)))
    u, v = (x.mean(0) - a) @ chol, (x.mean(0) - b) @ chol
    za, zb = stats.whiten(a[None])[0], stats.whiten(b[None])[0]
    assert za @ zb / np.linalg.norm(za) / np.linalg.norm(zb) == pytest.approx(
        u @ v / np.linalg.norm(u) / np.linalg.norm(v), abs=1e-12)
    p = np.linalg.inv(np.cov(x, rowvar=False))
    assert stats.mahalanobis(a[None], b[None])[0] == pytest.approx(
        math.sqrt((a - b) @ p @ (a - b)), rel=1e-10)
    assert np.allclose(stats.whitening @ stats.whitening.T, p, rtol=1e-8, atol=1e-10)


def test_too_few_reference_images_warn_and_use_shrinkage():
    x = np.random.default_rng(0).normal(size=(10, 32))
    with pytest.warns(UserWarning, match="10 images for 32-d features.*Ledoit-Wolf"):
        stats = FeatureStats.from_features(x)
    assert 0 < stats.shrinkage <= 1 and np.isfinite(stats.whitening).all()
    assert np.linalg.eigvalsh(stats.covariance).min() > 0
    with pytest.warns(UserWarning, match="singular"):
        FeatureStats.from_features(x, shrinkage="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FeatureStats.from_features(np.r_[x, x + 1, x - 1, x * 2]).shrinkage == 0
    with pytest.raises(ValueError, match="shrinkage must be"):
        FeatureStats.from_features(x, shrinkage="oas")


def test_an_unknown_transform_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown transform 'rotate'; choose from: rotation"):
        measure_invariance(_net(), _images(), ["rotate"], **SMALL)


def test_normalised_float_images_are_refused_with_the_fix():
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(DataError, match="looks normalised.*to_uint8"):
        ImageSource(x)[0]
    back = to_uint8(x * 0.25 + 0.0, [0.5] * 3, [0.25] * 3)
    assert back.dtype == torch.uint8 and ImageSource(back)[0].shape == (3, 16, 16)


def test_the_paper_draws_images_like_numpy_seed_and_choice():
    np.random.seed(0)  # noqa: NPY002 - the reference's own call
    expected = np.random.choice(np.arange(50), 20)  # noqa: NPY002
    assert _sample(50, 20, 0, "paper").tolist() == expected.tolist()
    v2 = _sample(50, 20, 0, "v2")
    assert len(set(v2.tolist())) == 20 and _sample(5, 20, 0, "v2").tolist() == [0, 1, 2, 3, 4]


def test_grids_follow_the_papers_code():
    paper, v2 = Geometry(256, 224, "paper"), Geometry(256, 224, "v2")
    counts = {name: len(parameters(name, None, paper)) for name in TRANSFORMS}
    assert counts == {**{n: 256 for n in TRANSFORMS}, "h_flip": 2, "v_flip": 2,
                      "grayscale": 2, "invert": 2, "equalize": 2, "posterize": 7}
    shifts = [p.get("translate") for p in parameters("translation", None, paper)]
    assert (0.0, 0.0) in shifts and min(s[0] for s in shifts) == -16.0  # 2 px steps
    assert max(s[0] for s in shifts) == 14.0
    assert len(parameters("rotation", None, v2)) == 255  # the identity angle dropped
    assert len(parameters("h_flip", None, v2)) == 1
    assert len(parameters("brightness", 20, v2)) == 19  # 0.25 + 3 * 0.25 is the identity
    assert len(parameters("translation", 16, paper)) == 16  # a 4 x 4 grid
    assert len(parameters("resized_crop", 16, paper)) == 16  # 2^4
    shears = [abs(s) for p in parameters("shear", None, paper) for s in p.get("shear")]
    assert max(shears) == 160 and 100 in shears  # past 90: tan repeats smaller shears
    assert max(abs(s) for p in parameters("shear", 16, v2) for s in p.get("shear")) == 60


def test_paper_quirk_translation_and_scale_carry_a_one_degree_shear():
    x = _images(2, 128)
    paper, v2 = Geometry(128, 112, "paper"), Geometry(128, 112, "v2")
    zero = [p for p in parameters("translation", 16, paper) if p.identity][0]
    one = [p for p in parameters("scale", 256, paper) if p.get("scale") == 1.0]
    assert zero.get("translate") == (0.0, 0.0) and not one  # 1.0 is not on the scale grid
    assert not torch.equal(transform_batch("translation", x, zero, paper), x)
    assert torch.equal(transform_batch("translation", x, zero, v2), x)


def test_every_transform_runs_under_both_protocols():
    net, images = _net(dtype=torch.float32), _images(6)
    for protocol in ("paper", "v2"):
        table = measure_invariance(net, images, None, k=4, num_images=3, protocol=protocol,
                                   shrinkage=0.5, **SMALL)
        assert table.transforms == list(TRANSFORMS)
        assert all(-1 - 1e-9 <= r["similarity"] <= 1 + 1e-9 for r in table.rows)
        assert all(r["count"] == 3 for r in table.rows)


def test_default_input_comes_from_the_models_data_config():
    net = _net()
    net.data_config = {"image_size": 32, "mean": [0.1] * 3, "std": [0.2] * 3}
    inputs = input_config(net)
    assert (inputs.crop, inputs.resize) == (32, 38)  # 32 * 256 / 224 = 36.6 -> even margin
    assert input_config(_net()).crop == 224 and input_config(_net()).resize == 256


def test_table_summary_and_csv_round_trip(tmp_path):
    table = measure_invariance(_net(), _images(), ["rotation", "posterize"], k=4,
                               num_images=6, **SMALL)
    summary = {r["transform"]: r for r in table.summary()}
    rot = [r["similarity"] for r in table.rows if r["transform"] == "rotation"]
    assert summary["rotation"]["similarity"] == pytest.approx(np.mean(rot))
    assert summary["rotation"]["params"] == 3 and summary["posterize"]["params"] == 7
    path = tmp_path / "invariance.csv"
    table.to_csv(path)
    back = InvarianceTable.read_csv(path)
    assert back.rows == table.rows
    head = table.to_csv(summary=True).splitlines()[0]
    assert head == "transform,similarity,distance,params,images"
    levels, sims = table.curve("rotation")
    assert levels.tolist() == [90.0, 180.0, 270.0] and sims.tolist() == rot


@pytest.mark.slow
def test_a_rotation_model_is_not_invariant_to_rotation(tmp_path):
    # Rotation prediction needs features that change with the orientation: after one epoch
    # on the demo pool, rotation must score well below translation and blur.
    import betaweighter as bw

    torch.manual_seed(0)
    bundle = bw.data.demo(tmp_path)
    backbone = conv_net(width=16, blocks=4)
    pretext = bw.RotationPretext(backbone)
    opt = torch.optim.SGD(pretext.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(bundle.pool, batch_size=64, shuffle=True)
    for x, _ in loader:
        b = pretext.batch(x)
        b.loss_fn(pretext(b.inputs)).mean().backward()
        opt.step()
        opt.zero_grad()
    images = to_uint8(bundle.pool.dataset.images[:400], bundle.mean, bundle.std)
    table = measure_invariance(backbone.eval(), images, ["rotation", "translation", "blur"],
                               k=8, num_images=200, image_size=32, mean=bundle.mean,
                               std=bundle.std)
    assert table.similarity("rotation") < table.similarity("translation") - 0.2
    assert table.similarity("rotation") < table.similarity("blur") - 0.2
