"""rotate4 against explicit rotations."""

from __future__ import annotations

import pytest
import torch

import betaweighter as bw


def test_rotations_and_labels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    r, y = bw.rotate4(x)
    assert r.shape == (8, 1, 3, 3)
    assert y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and y.dtype == torch.int64
    img = x[1, 0]
    # counter-clockwise quarter turns, written out by hand
    quarter = img.t().flip(0)
    torch.testing.assert_close(r[4, 0], img)
    torch.testing.assert_close(r[5, 0], quarter)
    torch.testing.assert_close(r[6, 0], img.flip(0).flip(1))
    torch.testing.assert_close(r[7, 0], img.t().flip(1))
    # the top-left pixel of image 1 goes to bottom-left after a counter-clockwise turn
    assert r[5, 0, 2, 0] == img[0, 0]


def test_grouping_lines_up_with_repeat_interleave():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    r, _ = bw.rotate4(x)
    owner = torch.arange(3).repeat_interleave(4)
    for row in range(12):  # each copy is a rotation of its owner's image
        assert any(torch.equal(r[row], torch.rot90(x[owner[row]], k, (-2, -1))) for k in range(4))
    assert r.dtype == torch.float64 and r.device == x.device


@pytest.mark.parametrize("shape,match", [((2, 3, 4, 5), "square"), ((3, 4, 4), r"\(B, C, H, W\)")])
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        bw.rotate4(torch.zeros(shape))


def test_rotation_pretext_batch_is_four_copies_with_their_labels():
    from betaweighter.models import conv_net

    pretext = bw.RotationPretext(conv_net(num_classes=4, width=4, blocks=1))
    assert isinstance(pretext, bw.pretext.Pretext)
    x = torch.randn(3, 3, 8, 8)
    batch = pretext.batch(x)
    assert isinstance(batch, bw.pretext.PretextBatch) and batch.copies == 4
    assert batch.inputs.shape == (12, 3, 8, 8)
    out = pretext(batch.inputs)
    losses = batch.loss_fn(out)
    torch.testing.assert_close(losses, bw.pretext.rotation_loss(out, torch.arange(4).repeat(3)))
    assert pretext.features(x).shape == (3, 4)
    with pytest.raises(ValueError, match="4-way head"):
        bw.RotationPretext(conv_net(num_classes=10, width=4, blocks=1))
