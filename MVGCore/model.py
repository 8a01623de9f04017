"""The MVG generator: a two-stream ViT over 2x1 canvases with a multi-level pixel decoder.

Input: an image canvas (prompt image on top of the query image) and a target canvas (prompt
output on top of the query output), both ImageNet-normalised RGB, and a token mask saying which
target patches are hidden. Output: the full target canvas; the loss (and inference) read it only
where the mask hid the target. Both canvases share one patch embedding; a learned segment token
tells the streams apart. The streams run separately up to ``merge_index`` and are averaged there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer_sam import get_rel_pos
from torch import nn
from torch.utils.checkpoint import checkpoint

from MVGCore.config import MVGConfig
from MVGCore.types import TASKS

LAYER_NORM_EPS = 1e-6
OPTIONAL_MODULES = ("decoder_skip", "decoder_gates", "decoder_refine")
"""Modules a config option adds (None when off); they start as a no-op (their last layer is zero),
so weights of a model without them initialise the rest (``--init``)."""
ATTENTION_MODES = ("bias", "folded")
"""How the relative position bias enters SDPA: as an ``attn_mask`` ("bias", the reference), or
folded into extra query/key channels ("folded": the same numbers without a mask, so GPUs can use
the flash kernel). See :meth:`MVGModel.set_attention`."""


def _rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, rows: int, cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ViTDet's decomposed bias in its two factors: (B, heads, N, rows) and (B, heads, N, cols);
    query n and key (r, c) get ``rel_h[n, r] + rel_w[n, c]``."""
    batch, heads, tokens, head_dim = q.shape
    grid_q = q.reshape(batch, heads, rows, cols, head_dim)
    table_h = get_rel_pos(rows, rows, rel_pos_h).to(q.dtype)  # (rows, rows, head_dim)
    table_w = get_rel_pos(cols, cols, rel_pos_w).to(q.dtype)
    rel_h = torch.einsum("bhrcd,rkd->bhrck", grid_q, table_h).reshape(batch, heads, tokens, rows)
    rel_w = torch.einsum("bhrcd,ckd->bhrck", grid_q, table_w).reshape(batch, heads, tokens, cols)
    return rel_h, rel_w


def _folded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, rows: int
) -> torch.Tensor:
    """SDPA with the decomposed bias and no mask. The bias of key (r, c) is the dot product of
    [rel_h, rel_w] with the key's one-hot row and column, so it is appended to the (pre-scaled)
    queries and the one-hots to the keys; channels are padded to a multiple of 8 for the kernels."""
    batch, heads, tokens, head_dim = q.shape
    cols = rel_w.shape[-1]
    extra = rows + cols
    padding = (-(head_dim + extra)) % 8
    keys = torch.arange(tokens, device=q.device)
    onehots = torch.cat([F.one_hot(keys // cols, rows), F.one_hot(keys % cols, cols)], dim=-1)
    onehots = F.pad(onehots.to(q.dtype), (0, padding)).expand(batch, heads, -1, -1)
    q = torch.cat([q * head_dim**-0.5, rel_h, rel_w, q.new_zeros(batch, heads, tokens, padding)], dim=-1)
    k = torch.cat([k, onehots], dim=-1)
    v = F.pad(v, (0, extra + padding))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :head_dim]


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with ViTDet's decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, rel_pos_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        if rel_pos_size is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, head_dim))
        else:
            self.rel_pos_h = self.rel_pos_w = None
        self.mode = "bias"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, rows, cols, dim = x.shape
        tokens = rows * cols
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if self.rel_pos_h is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rel_h, rel_w = _rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, rows, cols)
            if self.mode == "folded":
                out = _folded_attention(q, k, v, rel_h, rel_w, rows)
            else:
                bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, -1, tokens, tokens)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, rows, cols, dim))


def _average_query_half(x: torch.Tensor, k: int) -> torch.Tensor:
    """SegGPT's feature ensemble: each run of K consecutive canvases shares one query, so their
    query-half attention outputs are replaced by the mean over the K prompts."""
    batch, rows, cols, dim = x.shape
    if batch % k:
        raise ValueError(f"feature ensemble needs a batch divisible by K={k}, got {batch}")
    half = rows // 2
    grouped = x.reshape(batch // k, k, rows, cols, dim)
    query_mean = grouped[:, :, half:].mean(dim=1, keepdim=True).expand(-1, k, -1, -1, -1)
    return torch.cat([grouped[:, :, :half], query_mean], dim=2).reshape(batch, rows, cols, dim)


def _window_partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    batch, rows, cols, dim = x.shape
    pad_r, pad_c = (-rows) % size, (-cols) % size
    if pad_r or pad_c:
        x = F.pad(x, (0, 0, 0, pad_c, 0, pad_r))
    padded = (rows + pad_r, cols + pad_c)
    x = x.reshape(batch, padded[0] // size, size, padded[1] // size, size, dim)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, dim), padded


def _window_unpartition(
    windows: torch.Tensor, size: int, padded: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    per_image = (padded[0] // size) * (padded[1] // size)
    batch = windows.shape[0] // per_image
    x = windows.reshape(batch, padded[0] // size, padded[1] // size, size, size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded[0], padded[1], -1)
    return x[:, : shape[0], : shape[1]].contiguous()


class Block(nn.Module):
    """Pre-norm transformer block on (B, rows, cols, C) token grids; optionally windowed."""

    def __init__(self, config: MVGConfig, drop_path: float, window_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size = window_size
        rel_size = (window_size, window_size) if window_size else config.grid
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, config.num_heads, rel_size if config.use_rel_pos else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, ensemble_k: int = 1) -> torch.Tensor:
        h = self.norm1(x)
        if self.window_size:
            windows, padded = _window_partition(h, self.window_size)
            h = _window_unpartition(self.attn(windows), self.window_size, padded, x.shape[1:3])
        else:
            h = self.attn(h)
        if ensemble_k > 1:
            h = _average_query_half(h, ensemble_k)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MVGModel(nn.Module):
    def __init__(self, config: MVGConfig) -> None:
        super().__init__()
        self.config = config
        dim, patch = config.embed_dim, config.patch_size
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch, in_chans=config.in_chans, embed_dim=dim, output_fmt="NHWC"
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.segment_token_x = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.segment_token_y = nn.Parameter(torch.zeros(1, 1, 1, dim))
        # Stored as an MAE/timm ViT stores it (class position first, square grid) so that
        # pre-trained encoders load unchanged; resized to the canvas grid in forward.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_embed_grid**2, dim))
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(config, rates[i], config.window_size if i in config.window_blocks else 0)
            for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.decoder_embed = nn.Linear(dim * len(config.feature_blocks), patch * patch * config.decoder_dim)
        self.decoder_pred = nn.Sequential(
            nn.Conv2d(config.decoder_dim, config.decoder_dim, kernel_size=3, padding=1),
            LayerNorm2d(config.decoder_dim, eps=LAYER_NORM_EPS),
            nn.GELU(),
            nn.Conv2d(config.decoder_dim, config.in_chans, kernel_size=1),
        )
        self.decoder_skip = (
            nn.Conv2d(config.in_chans, config.decoder_dim, kernel_size=3, padding=1)
            if config.pixel_skip
            else None
        )
        # One gate per output channel for the query image and one for the carried prompt target.
        self.decoder_gates = (
            nn.Conv2d(config.decoder_dim, 2 * config.in_chans, kernel_size=1) if config.copy_gates else None
        )
        self.decoder_refine = Refiner(config) if config.refine_layers else None
        self._init_weights()

    def _init_weights(self) -> None:
        for token in (self.mask_token, self.segment_token_x, self.segment_token_y, self.pos_embed):
            trunc_normal_(token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        for name in OPTIONAL_MODULES:  # start as the model without them
            optional = getattr(self, name)
            if optional is not None:
                last = optional.out if isinstance(optional, Refiner) else optional
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def grid_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.config.pos_embed_grid
        resized = resample_abs_pos_embed(
            self.pos_embed, new_size=[rows, cols], old_size=[grid, grid], num_prefix_tokens=1
        )
        return resized[:, 1:].reshape(1, rows, cols, -1)

    def check_inputs(self, images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        cfg = self.config
        if images.ndim != 4 or images.shape[1] != cfg.in_chans:
            raise ValueError(f"images must be (B, {cfg.in_chans}, H, W) canvases, got {tuple(images.shape)}")
        if targets.shape != images.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} must have the images' shape {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % (2 * cfg.patch_size) or width % cfg.patch_size:
            raise ValueError(
                f"canvas {height}x{width} must be two stacked tiles of a multiple of {cfg.patch_size} pixels"
            )
        tokens = (height // cfg.patch_size) * (width // cfg.patch_size)
        if mask.shape != (images.shape[0], tokens):
            raise ValueError(f"mask must be (B, {tokens}) booleans for this canvas, got {tuple(mask.shape)}")

    def set_attention(self, mode: str) -> None:
        """Choose how the relative position bias is computed (see ``ATTENTION_MODES``); both give
        the same predictions up to rounding, only the speed differs (benchmarks/RESULTS.md)."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        for block in self.blocks:
            block.attn.mode = mode

    def forward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        ensemble_k: int = 1,
        query_only: bool = False,
        tasks: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Predict the target canvas.

        ``mask`` (B, tokens) is True where the target patch is hidden from the model; tokens are
        numbered row-major over the canvas grid. ``ensemble_k`` > 1 enables the feature ensemble:
        consecutive runs of K canvases must share the same query half. ``query_only`` returns just
        the query (bottom) tile, (B, 3, S, S), which is all inference reads: the decoder, most of
        a small model's cost, then runs on half the canvas. ``tasks`` names each canvas' task; a
        ``refine_layers`` model corrects only those in its ``refine_tasks`` (None: every canvas,
        allowed only when it refines every task).
        """
        self.check_inputs(images, targets, mask)
        batch = images.shape[0]
        refine = self.refine_mask(tasks, batch)
        x = self.patch_embed(images)
        y = self.patch_embed(targets)
        rows, cols = x.shape[1:3]
        hidden = mask.reshape(batch, rows, cols, 1).to(y.dtype)
        y = y * (1 - hidden) + self.mask_token.to(y.dtype) * hidden
        pos = self.grid_pos_embed(rows, cols)
        x = x + self.segment_token_x + pos
        y = y + self.segment_token_y + pos

        z = torch.cat([x, y], dim=0)
        features = []
        for index, block in enumerate(self.blocks):
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                z = checkpoint(block, z, ensemble_k, use_reentrant=False)
            else:
                z = block(z, ensemble_k)
            if index == self.config.merge_index:
                z = (z[:batch] + z[batch:]) * 0.5
            if index in self.config.feature_blocks:
                features.append(self.norm(z))
        features = torch.cat(features, dim=-1)
        carried = self.carried_prompt(targets) if self.decoder_gates is not None else None
        if not query_only:
            return self.decode(features, images, carried, refine)
        # One token row of the prompt half above the query gives the 3x3 conv its context, so the
        # query tile is exactly the bottom half of the full output.
        first = rows // 2 - 1
        patch = self.config.patch_size
        below = slice(first * patch, None)
        carried = None if carried is None else carried[..., below, :]
        return self.decode(features[:, first:], images[..., below, :], carried, refine)[..., patch:, :]

    def refine_mask(self, tasks: Sequence[str] | None, batch: int) -> torch.Tensor | None:
        """(B,) booleans: the canvases whose task the refiner corrects; None = all of them."""
        if self.decoder_refine is None:
            return None
        refined = self.config.refine_tasks
        if tasks is None:
            if set(refined) != set(TASKS):
                raise ValueError(f"this model refines only {list(refined)} canvases; pass each canvas' task")
            return None
        if len(tasks) != batch:
            raise ValueError(f"tasks names {len(tasks)} canvases, the batch has {batch}")
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; expected names from {list(TASKS)}")
        return torch.tensor([task in refined for task in tasks])

    @staticmethod
    def carried_prompt(targets: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W): the prompt tile's target moved down onto the query tile, zeros on the
        prompt tile, for ``copy_gates`` to copy. Only the prompt half is read, so nothing of the
        query's target leaks."""
        half = targets.shape[-2] // 2
        prompt = targets[..., :half, :]
        return torch.cat([torch.zeros_like(prompt), prompt], dim=-2)

    def decode(
        self,
        features: torch.Tensor,
        images: torch.Tensor | None = None,
        carried: torch.Tensor | None = None,
        refine: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token features (B, rows, cols, C) -> pixels (B, 3, rows*p, cols*p). The pixel grid is
        laid out channels-last, the layout the convolutions and LayerNorm2d run fastest in.
        ``images`` (B, 3, rows*p, cols*p) are the image canvas' pixels on the same grid, which
        ``pixel_skip`` models add to the pixel features and ``copy_gates`` models copy through their
        gates; ``carried`` is :meth:`carried_prompt` on that grid, which ``copy_gates`` models copy
        too. ``refine_layers`` models then
        add their :class:`Refiner`'s correction, read from the pixel features, output and images, to
        the canvases ``refine`` (B,) marks (None: all)."""
        batch, rows, cols, _ = features.shape
        patch, channels = self.config.patch_size, self.config.decoder_dim
        x = self.decoder_embed(features).reshape(batch, rows, cols, patch, patch, channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * patch, cols * patch, channels)
        x = x.permute(0, 3, 1, 2)
        if self.decoder_skip is not None:
            if images is None:
                raise ValueError("a pixel_skip model decodes with the image canvas' pixels; pass images")
            x = x + self.decoder_skip(images.to(x.dtype))
        if self.decoder_refine is not None and images is None:
            raise ValueError("a refine_layers model decodes with the image canvas' pixels; pass images")
        if self.decoder_gates is not None and (images is None or carried is None):
            raise ValueError("a copy_gates model decodes with images and carried; pass both")
        hidden = self.decoder_pred[:-1](x)
        out = self.decoder_pred[-1](hidden)
        if self.decoder_gates is not None:
            image_gate, prompt_gate = self.decoder_gates(hidden).chunk(2, dim=1)
            out = out + image_gate * images.to(x.dtype) + prompt_gate * carried.to(x.dtype)
        if self.decoder_refine is None or (refine is not None and not bool(refine.any())):
            return out
        correction = self.decoder_refine(torch.cat([hidden, out, images.to(x.dtype)], dim=1))
        if refine is not None:
            correction = correction * refine.to(correction.device, correction.dtype).view(-1, 1, 1, 1)
        return out + correction


class Refiner(nn.Module):
    """``refine_layers`` pre-activation residual 3x3 convolutions of ``decoder_dim`` channels over
    (decoder pixel features, output, image), then a 3x3 convolution to the output's channels (zero
    at the start: a no-op). Residual, so the first convolution's linear view of the output and the
    image reaches the last one undiluted: a plain stack of GELU convolutions shrinks it layer by
    layer, and learning to return the image where the output lost contrast took hundreds of steps."""

    def __init__(self, config: MVGConfig) -> None:
        super().__init__()
        width, chans = config.decoder_dim, config.in_chans
        self.inp = nn.Conv2d(width + 2 * chans, width, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1) for _ in range(config.refine_layers - 1)
        )
        self.out = nn.Conv2d(width, chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = x + layer(F.gelu(x))
        return self.out(F.gelu(x))


def build_model(config: MVGConfig) -> MVGModel:
    return MVGModel(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
