"""Layer-wise lr decay groups, the no-weight-decay rule, and the warmup + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.optim import build_optimizer, layer_id, lr_at, param_groups, set_lr

DEPTH = 3


@pytest.fixture(scope="module")
def model() -> MVGModel:
    config = config_for(
        "tiny",
        tile_size=32,
        patch_size=8,
        embed_dim=16,
        depth=DEPTH,
        num_heads=2,
        merge_index=0,
        feature_blocks=(1, 2),
        decoder_dim=4,
    )
    return MVGModel(config)


def test_layer_ids_follow_depth():
    assert layer_id("patch_embed.proj.weight", DEPTH) == 0
    assert layer_id("pos_embed", DEPTH) == 0
    assert layer_id("mask_token", DEPTH) == 0
    assert layer_id("blocks.0.attn.qkv.weight", DEPTH) == 1
    assert layer_id("blocks.2.mlp.fc2.bias", DEPTH) == 3
    assert layer_id("norm.weight", DEPTH) == DEPTH + 1
    assert layer_id("decoder_pred.0.weight", DEPTH) == DEPTH + 1


def test_groups_cover_every_parameter_once_with_decay_rules(model):
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    decay_of = {n: g["weight_decay"] for g in groups for n in g["names"]}
    scale_of = {n: g["lr_scale"] for g in groups for n in g["names"]}
    for name in (
        "pos_embed",
        "mask_token",
        "segment_token_x",
        "blocks.0.attn.rel_pos_h",
        "blocks.1.norm1.weight",
        "blocks.1.attn.qkv.bias",
        "norm.bias",
    ):
        assert decay_of[name] == 0.0, name
    for name in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_embed.weight"):
        assert decay_of[name] == 0.05, name
    assert scale_of["patch_embed.proj.weight"] == pytest.approx(0.5 ** (DEPTH + 1))
    assert scale_of["blocks.0.mlp.fc1.weight"] == pytest.approx(0.5**DEPTH)
    assert scale_of["blocks.2.mlp.fc1.weight"] == pytest.approx(0.5)
    assert scale_of["decoder_embed.weight"] == 1.0


def test_optimizer_learning_rates_scale_per_group(model):
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert isinstance(optimizer, torch.optim.AdamW)
    set_lr(optimizer, 2e-3)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(2e-3 * 0.8 ** (DEPTH + 1 - group["layer"]))


def test_lr_scales_speed_up_named_modules_only(model):
    gated = MVGModel(model.config.replace(copy_gates=True))
    groups = param_groups(gated, weight_decay=0.05, layer_decay=0.5, lr_scales={"decoder_gates": 30})
    scale_of = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale_of["decoder_gates.weight"] == scale_of["decoder_gates.bias"] == 30.0
    assert scale_of["decoder_pred.0.weight"] == 1.0 and scale_of["blocks.2.mlp.fc1.weight"] == 0.5
    optimizer = build_optimizer(gated, 1e-3, 0.05, 0.5, lr_scales={"decoder_gates": 30})
    set_lr(optimizer, 1e-3)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["names"]}
    assert lr_of["decoder_gates.bias"] == pytest.approx(3e-2)


def test_warmup_then_cosine():
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=14, min_lr=0.1) for s in range(14)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lr_at(14, 1.0, 4, 14, 0.1) == pytest.approx(0.1)
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)
