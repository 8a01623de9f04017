import pytest
import torch

from MVGCore.loss import (
    BACKGROUND_WEIGHT,
    informative_samples,
    mvg_loss,
    outside_hole_weights,
    pixel_mask,
    pixel_weights,
)

GRID, PATCH = (4, 2), 4  # a 16x8 canvas


def _mask(hidden_rows):
    mask = torch.zeros(1, *GRID, dtype=torch.bool)
    mask[:, hidden_rows] = True
    return mask.reshape(1, -1)


def test_pixel_mask_expands_tokens_to_patches():
    pix = pixel_mask(_mask([2, 3]), GRID, PATCH)
    assert pix.shape == (1, 1, 16, 8)
    assert pix[0, 0, 8:].all() and not pix[0, 0, :8].any()


def test_loss_counts_only_hidden_patches():
    target01 = torch.zeros(1, 3, 16, 8)
    target01[:, :, :4] = 1.0  # informative visible half
    pred = target01.clone()
    pred[:, :, :8] += 5.0  # errors only on visible rows
    weights = torch.ones(1, 1, 16, 8)
    assert mvg_loss(pred, target01, target01, _mask([2, 3]), weights, GRID, PATCH) == 0
    pred[:, :, 8:] += 1.0
    loss = mvg_loss(pred, target01, target01, _mask([2, 3]), weights, GRID, PATCH)
    assert torch.isclose(loss, torch.tensor(1.0 - 0.005))  # smooth L1, beta 0.01, error 1


def test_segmentation_background_weighs_a_tenth():
    foreground = torch.zeros(1, 16, 8, dtype=torch.bool)
    foreground[:, 12:] = True
    weights = pixel_weights(foreground, torch.tensor([True]))
    assert weights[0, 0, 0, 0] == BACKGROUND_WEIGHT and weights[0, 0, 15, 0] == 1.0
    assert (pixel_weights(foreground, torch.tensor([False])) == 1.0).all()


def test_samples_with_an_uninformative_visible_target_are_dropped():
    target01 = torch.zeros(2, 3, 16, 8)
    target01[1, :, :2] = 1.0  # only sample 1 shows something in its visible half
    hidden = pixel_mask(_mask([2, 3]).expand(2, -1), GRID, PATCH)
    assert informative_samples(target01, hidden).tolist() == [False, True]
    pred = torch.ones(2, 3, 16, 8, requires_grad=True)
    loss = mvg_loss(
        pred, target01, target01, _mask([2, 3]).expand(2, -1), torch.ones(2, 1, 16, 8), GRID, PATCH
    )
    loss.backward()
    assert pred.grad[0].abs().sum() == 0 and pred.grad[1].abs().sum() > 0


def test_outside_hole_weights_check_their_arguments():
    weights, holes = torch.ones(1, 1, 16, 8), torch.zeros(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="outside the hole"):
        outside_hole_weights(weights, holes, torch.tensor([True]), 1.5)
    with pytest.raises(ValueError, match="prompt; query"):
        outside_hole_weights(torch.ones(1, 1, 8, 8), holes, torch.tensor([True]), 0.5)
