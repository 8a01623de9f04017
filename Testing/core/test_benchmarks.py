"""The speed work: the model's fast paths give the reference's numbers, and every benchmark script
runs end to end at tiny sizes and writes the JSON it promises (speed itself is not asserted here;
benchmarks/RESULTS.md records it)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root: python -m benchmarks.X
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_all, model_throughput, segment_e2e  # noqa: E402
from MVGCore.config import config_for  # noqa: E402
from MVGCore.masking import ar_mask  # noqa: E402
from MVGCore.model import MVGModel  # noqa: E402


def _model_and_inputs(batch: int = 2, **overrides):
    settings = {"tile_size": 32, "depth": 3, "merge_index": 0, "feature_blocks": (1, 2)} | overrides
    config = config_for("tiny", **settings)
    model = MVGModel(config)
    for block in model.blocks:  # the reference initialises the tables to zero: a zero bias proves nothing
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    side = config.tile_size
    images = torch.randn(batch, 3, 2 * side, side)
    targets = torch.randn(batch, 3, 2 * side, side)
    mask = torch.from_numpy(ar_mask(config.grid)).expand(batch, -1)
    return model, images, targets, mask


@pytest.mark.parametrize("windows", [{}, {"window_size": 3, "window_blocks": (0,)}])
def test_folded_rel_pos_attention_gives_the_reference_outputs_and_gradients(windows):
    model, images, targets, mask = _model_and_inputs(**windows)
    reference = model(images, targets, mask)
    reference.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert reference.abs().max() > 0.1
    model.zero_grad()
    model.set_attention("folded")
    folded = model(images, targets, mask)
    folded.square().mean().backward()
    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-3, msg=name)
    with pytest.raises(ValueError, match="attention mode must be one of"):
        model.set_attention("flash")


def test_rel_pos_bias_really_changes_attention():
    # The folded/bias comparison above is only meaningful if the bias matters at all.
    model, images, targets, mask = _model_and_inputs()
    with torch.no_grad():
        before = model(images, targets, mask)
        for block in model.blocks:
            block.attn.rel_pos_h.zero_()
            block.attn.rel_pos_w.zero_()
        assert not torch.allclose(before, model(images, targets, mask), atol=1e-3)


def test_query_only_decoding_is_the_bottom_half_of_the_full_output():
    model, images, targets, mask = _model_and_inputs()
    model.eval()
    with torch.inference_mode():
        full = model(images, targets, mask)
        query = model(images, targets, mask, query_only=True)
    side = images.shape[-1]
    assert query.shape == (2, 3, side, side)
    torch.testing.assert_close(query, full[..., side:, :], atol=1e-6, rtol=1e-5)


def test_flops_are_counted_per_canvas_for_inference_and_training():
    config = config_for("tiny", tile_size=32)
    full = model_throughput.flops_per_canvas(config)
    query = model_throughput.flops_per_canvas(config, query_only=True)
    training = model_throughput.flops_per_canvas(config, backward=True)
    assert 0 < query < full
    assert 2.8 < training / full < 3.1  # backward costs about twice the forward pass
    # The encoder's linear layers alone (qkv, proj, MLP) give a lower bound: 24 d^2 FLOPs per token
    # and block, with the blocks up to the merge run on both streams.
    tokens = config.grid[0] * config.grid[1]
    passes = config.depth + config.merge_index + 1
    assert full > 24 * config.embed_dim**2 * tokens * passes


def test_model_throughput_writes_one_row_per_variant_and_batch(tmp_path):
    out = tmp_path / "throughput.json"
    argv = ["--presets", "tiny", "--tile", "32", "--batch-sizes", "1", "2", "--min-seconds", "0.01"]
    assert model_throughput.main([*argv, "--peak-size", "128", "--no-rel-pos", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peak"]["tflops"] > 0 and result["environment"]["torch"] == torch.__version__
    rows = result["rows"]
    variants = {(r["attention"], r["decode"]) for r in rows}
    assert variants == {(a, d) for a in ("bias", "folded") for d in ("full", "query")} | {("none", "query")}
    assert len(rows) == 2 * len(variants)
    for row in rows:
        assert row["latency_ms"] > 0 and row["dtype"] == "fp32"
        assert row["canvases_per_s"] == pytest.approx(row["batch"] / row["latency_ms"] * 1e3)
        assert row["peak_fraction"] == pytest.approx(row["tflops"] / result["peak"]["tflops"])


def test_segment_e2e_phases_add_up_and_the_prompt_slices_come_back(tmp_path):
    out = tmp_path / "e2e.json"
    assert segment_e2e.main(["--shape", "6", "48", "48", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["io_measured"] and result["prompt_slices"] == [2, 4]
    for run in result["runs"]:
        phases = [run[f"{p}_s"] for p in segment_e2e.PHASES]
        assert min(phases) >= 0 and run["io_s"] > 0 and run["writing_s"] > 0 and run["model_s"] > 0
        assert sum(phases) == pytest.approx(run["total_s"])
        assert 0 < run["outside_model_fraction"] < 1
        assert run["foreground_voxels"] > 0  # at least the kept prompt labels
    _, sparse, _, picks = segment_e2e.synthetic_case((6, 48, 48))
    assert [k for k in range(6) if sparse[k].any()] == picks
    assert np.count_nonzero(sparse) <= result["runs"][0]["foreground_voxels"]


def test_segment_e2e_without_io_and_bad_arguments(tmp_path):
    out = tmp_path / "e2e.json"
    assert segment_e2e.main(["--shape", "4", "32", "32", "--no-io", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["io_s"] == 0 and run["writing_s"] == 0 and run["model_s"] > 0
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        segment_e2e.main(["--shape", "4", "32", "32", "--checkpoint", str(tmp_path / "missing.safetensors")])
    with pytest.raises(ValueError, match="--repeats"):
        segment_e2e.main(["--repeats", "0"])


@pytest.mark.slow
def test_gpu_script_runs_every_stage_in_smoke_mode(tmp_path):
    assert gpu_all.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_all.json").read_text())
    stages = result["stages"]
    assert list(stages) == [
        "matmul_peak",
        "model_throughput",
        "train_step",
        "segment_e2e",
        "compile",
        "predict_memory",
        "loader_throughput",
    ]
    assert not [name for name, record in stages.items() if "error" in record]
    assert stages["compile"] == {"skipped": "smoke: compiling takes about a minute on a CPU"}
    assert stages["train_step"]["rows"][0]["mfu"] > 0
    assert len(stages["segment_e2e"]["runs"]) == 2
    assert stages["predict_memory"]["rows"][0]["task"] == "segment"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gpu_all.main(["--device", "cpu", "--out", str(tmp_path)])


def test_denoise_volume_times_native_and_fitted_runs(tmp_path, checkpoint):
    from benchmarks import denoise_volume

    out = tmp_path / "denoise.json"
    assert (
        denoise_volume.main(["--shape", "3", "40", "70", "--checkpoint", str(checkpoint), "--json", str(out)])
        == 0
    )
    runs = json.loads(out.read_text())["runs"]
    assert [(r["image_scale"], r["prompts"]) for r in runs] == [
        ("native", "self-made"),
        ("fit", "self-made"),
        ("native", "2 given, calibrated"),
    ]
    assert all(r["seconds"] > 0 and r["max_rss_mb"] > 0 for r in runs)
