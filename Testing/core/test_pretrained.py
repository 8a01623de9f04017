import timm
import torch

from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.pretrained import load_vit_encoder


def test_a_timm_vit_encoder_loads_with_position_embedding_resized():
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, num_classes=0
    )  # 192 wide, 3 heads: the tiny preset's width; a 4x4 position grid with a class token
    model = MVGModel(config_for("tiny", tile_size=32, depth=6, merge_index=0, feature_blocks=(5,)))
    report = load_vit_encoder(model, {f"module.{k}": v for k, v in vit.state_dict().items()})
    assert torch.equal(model.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert torch.equal(model.blocks[0].mlp.fc2.bias, vit.blocks[0].mlp.fc2.bias)
    assert torch.equal(model.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert torch.equal(model.norm.weight, vit.norm.weight)
    assert "pos_embed" in report.resized and model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    assert "module.cls_token" in report.unused
    assert "blocks.4.attn.qkv.weight" in report.not_initialised  # the file has only 4 blocks
    assert "decoder_embed.weight" in report.not_initialised
    assert "loaded" in report.summary()


def test_shape_mismatches_are_reported_not_loaded():
    model = MVGModel(config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,)))
    before = model.blocks[0].attn.qkv.weight.clone()
    report = load_vit_encoder(model, {"blocks.0.attn.qkv.weight": torch.zeros(9, 9)})
    assert "blocks.0.attn.qkv.weight" in report.mismatched
    assert torch.equal(model.blocks[0].attn.qkv.weight, before)
