import pytest
import torch

from MVGCore.config import PRESETS, MVGConfig, config_for
from MVGCore.masking import ar_mask
from MVGCore.model import MVGModel, count_parameters

REFERENCE_LARGE_PARAMETERS = 370_721_155


def _inputs(config: MVGConfig, batch: int = 2):
    side = config.tile_size
    images = torch.randn(batch, 3, 2 * side, side)
    targets = torch.randn(batch, 3, 2 * side, side)
    mask = torch.from_numpy(ar_mask(config.grid)).expand(batch, -1).clone()
    return images, targets, mask


def test_large_preset_matches_reference_parameter_count():
    with torch.device("meta"):
        model = MVGModel(config_for("large"))
    assert count_parameters(model) == REFERENCE_LARGE_PARAMETERS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_forward_and_backward_with_a_gradient_for_every_parameter(preset):
    # Small tiles and at most 4 blocks keep this fast; the block structure is the preset's.
    base = PRESETS[preset]
    depth = min(base.depth, 4)
    config = base.replace(
        tile_size=32,
        depth=depth,
        merge_index=0,
        feature_blocks=tuple(range(depth)),
        drop_path_rate=0.0,
    )
    model = MVGModel(config)
    images, targets, mask = _inputs(config)
    out = model(images, targets, mask)
    assert out.shape == images.shape
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_hidden_target_patches_do_not_leak_into_the_prediction():
    config = config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,))
    model = MVGModel(config).eval()
    images, targets, mask = _inputs(config, batch=1)
    other = targets.clone()
    other[..., 32:, :] = torch.randn_like(other[..., 32:, :])  # change only the hidden query half
    with torch.no_grad():
        assert torch.equal(model(images, targets, mask), model(images, other, mask))


def test_window_attention_really_restricts_attention_to_windows():
    config = config_for(
        "tiny", tile_size=64, depth=1, merge_index=0, feature_blocks=(0,), window_size=2, window_blocks=(0,)
    )
    model = MVGModel(config).eval()
    images, targets, mask = _inputs(config, batch=1)
    with torch.no_grad():
        base = model(images, targets, mask)
        changed = images.clone()
        changed[..., :16, :16] += 5.0  # token (0, 0) only: its window covers tokens rows 0-1, cols 0-1
        out = model(changed, targets, mask)
    diff = (out - base).abs().sum(1)[0]
    assert diff[:32, :32].max() > 0  # inside the window: affected
    # Outside the window nothing changes, except the one-pixel reach of the decoder's 3x3 conv.
    assert diff[33:, :].max() == 0 and diff[:, 33:].max() == 0
    global_cfg = config.replace(window_blocks=())
    assert count_parameters(MVGModel(global_cfg)) != count_parameters(
        model
    )  # rel-pos tables sized per window


def test_feature_ensemble_gives_one_answer_for_a_shared_query():
    config = config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,))
    model = MVGModel(config).eval()
    images, targets, mask = _inputs(config, batch=2)
    images[1, :, 32:] = images[0, :, 32:]  # both canvases share the query
    with torch.no_grad():
        single = model(images, targets, mask)
        ensembled = model(images, targets, mask, ensemble_k=2)
    # Row 32 is excluded: the decoder's 3x3 conv there also sees the (different) prompt rows.
    assert not torch.allclose(single[0, :, 33:], single[1, :, 33:])
    assert torch.allclose(ensembled[0, :, 33:], ensembled[1, :, 33:], atol=1e-5)
    with pytest.raises(ValueError, match="divisible by K=3"):
        model(images, targets, mask, ensemble_k=3)


def test_activation_checkpointing_gives_the_same_gradients():
    config = config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,))
    plain = MVGModel(config)
    checkpointed = MVGModel(config.replace(grad_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    images, targets, mask = _inputs(config)
    for model in (plain, checkpointed):
        model(images, targets, mask).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_bf16_autocast_forward_is_finite():
    config = config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,))
    model = MVGModel(config)
    images, targets, mask = _inputs(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, targets, mask)
    assert torch.isfinite(out.float()).all()


def test_model_rejects_inputs_of_the_wrong_form():
    config = config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,))
    model = MVGModel(config)
    images, targets, mask = _inputs(config)
    with pytest.raises(ValueError, match="must have the images' shape"):
        model(images, targets[:, :, :32], mask)
    with pytest.raises(ValueError, match=r"mask must be \(B, 8\)"):
        model(images, targets, mask[:, :4])
    with pytest.raises(ValueError, match="canvases"):
        model(images[:, :1], targets[:, :1], mask)


def test_config_rejects_inconsistent_settings_and_unknown_keys():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        config_for("tiny", tile_size=100)
    with pytest.raises(ValueError, match="feature block 0"):
        config_for("large", feature_blocks=(0, 23))
    with pytest.raises(ValueError, match="unknown MVGConfig fields"):
        MVGConfig.from_dict({"embed_dim": 64, "colour": "red"})
    with pytest.raises(ValueError, match="unknown model preset"):
        config_for("huge")
    config = config_for("small", tile_size=224)
    assert MVGConfig.from_dict(config.to_dict()) == config


def test_the_retired_carry_prompt_is_dropped_when_off_and_refused_when_on():
    config = config_for("tiny")
    assert MVGConfig.from_dict({**config.to_dict(), "carry_prompt": False}) == config
    with pytest.raises(ValueError, match=r"^x\.json: carry_prompt=True was retired"):
        MVGConfig.from_dict({**config.to_dict(), "carry_prompt": True}, "x.json")
