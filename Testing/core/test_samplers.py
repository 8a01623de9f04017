"""In-context samplers: agreed sample format, each task's construction, weights, determinism, workers."""

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from MVGCore.data.samplers import InContextDataset, SamplerConfig, collate
from MVGCore.data.store import SliceStore, StoreWriter

SIZE = 32
NO_AUGMENT = {"crop_prob": 0.0, "hflip_prob": 0.0, "vflip_prob": 0.0, "jitter_prob": 0.0}
ALL_TASKS = ("segment", "denoise", "inpaint", "synthesize")
STILL = {"shift": 0.0, "rotate": 0.0, "scale": (1.0, 1.0)}
"""Propagation pairs without the prompt's independent motion."""


def _only(task: str, **extra) -> dict:
    return {"tasks": {t: float(t == task) for t in ALL_TASKS}, **extra}


def _blocks(rng: np.random.Generator, slices: int) -> np.ndarray:
    """Label tiles of random rectangles of classes 1..3, foreground on every other slice."""
    labels = np.zeros((slices, SIZE, SIZE), np.uint8)
    for s in range(0, slices, 2):
        for c in (1, 2, 3):
            top, left = rng.integers(0, SIZE - 10, 2)
            labels[s, top : top + 10, left : left + 10] = c
    return labels


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SliceStore:
    """Datasets "A" (3 cases, 2 channels, labels; class k in channel c of case a<n> is
    0.1 + 0.2 k + 0.05 c + 0.02 n) and
    "B" (1 case, 1 channel, a degraded image with a stored clean target)."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("stores") / "store"
    with StoreWriter(out, SIZE, 0) as writer:
        for case in range(3):
            labels = _blocks(rng, 6)
            images = np.stack([0.1 + 0.2 * labels + 0.05 * c + 0.02 * case for c in range(2)], axis=1)
            writer.add_case(
                f"a{case}",
                "A",
                ("MR", "MR"),
                ALL_TASKS,
                images,
                tuple(range(6)),
                tuple(bool(x.any()) for x in labels),
                label=labels,
            )
        clean = rng.uniform(0.2, 0.8, (4, SIZE, SIZE)).astype(np.float32)
        degraded = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)[:, None]
        writer.add_case(
            "b0", "B", ("CT",), ("denoise", "inpaint"), degraded, (0, 1, 2, 3), (False,) * 4, target=clean
        )
    return SliceStore(out)


def _find(store: SliceStore, tile: np.ndarray, target: bool = False) -> set[tuple[str, int, int]]:
    """(case id, position, channel) of every stored tile equal (to float16 precision) to ``tile``."""
    found = set()
    for case in store.cases:
        for position in range(len(case.slices)):
            if target:
                if case.target_row is not None and np.allclose(store.target(case, position), tile, atol=1e-3):
                    found.add((case.case_id, position, -1))
                continue
            for channel in range(case.channels):
                if np.allclose(store.image(case, position, channel), tile, atol=1e-3):
                    found.add((case.case_id, position, channel))
    return found


def test_every_task_yields_the_agreed_sample_format(store):
    for task in ALL_TASKS:
        sample = InContextDataset(store, _only(task), length=4, seed=1)[0]
        assert sample["task"] == task and sample["dataset"] in ("A", "B")
        for key in ("prompt_image", "query_image"):
            assert sample[key].dtype == np.float32 and sample[key].shape == (SIZE, SIZE)
            assert 0.0 <= sample[key].min() and sample[key].max() <= 1.0
        expected = np.int64 if task == "segment" else np.float32
        for key in ("prompt_target", "query_target"):
            assert sample[key].dtype == expected and sample[key].shape == (SIZE, SIZE)
        assert sample["hole"].dtype == bool and sample["hole"].shape == (SIZE, SIZE)
        assert sample["hole"].any() == (task == "inpaint")


def test_segmentation_pairs_two_foreground_slices_of_one_case(store):
    config = _only("segment", pairing="independent", augment=NO_AUGMENT)
    dataset = InContextDataset(store, config, length=30, seed=2)
    for index in range(30):
        sample = dataset[index]
        (prompt,) = _find(store, sample["prompt_image"])
        (query,) = _find(store, sample["query_image"])
        assert prompt[0] == query[0] == sample["case_id"]
        assert prompt[1] != query[1] and prompt[2] == query[2]  # other slice, same channel
        case = next(c for c in store.cases if c.case_id == sample["case_id"])
        np.testing.assert_array_equal(sample["query_target"], store.label(case, query[1]))
        assert sample["prompt_target"].any() and sample["query_target"].any()


def test_labels_follow_their_image_through_crops_and_flips(store):
    augment = {"crop_scale": (0.3, 0.6), "hflip_prob": 0.5, "vflip_prob": 0.5, "jitter_prob": 0.0}
    config = _only("segment", augment=augment, propagation=STILL)
    dataset = InContextDataset(store, config, length=20, seed=3)
    checked = 0
    for index in range(20):
        sample = dataset[index]
        for half in ("prompt", "query"):
            image, label = sample[f"{half}_image"], sample[f"{half}_target"]
            offset = image.min() - 0.1  # background is 0.1 + 0.05 c + 0.02 n
            for k in np.unique(label):
                # bilinear images blur across an edge by up to the zoom factor (< 2 here)
                interior = ndimage.binary_erosion(label == k, iterations=2)
                if interior.any():
                    np.testing.assert_allclose(image[interior], 0.1 + 0.2 * k + offset, atol=2e-3)
                    checked += 1
    assert checked > 40


def test_cross_case_prompts_and_binary_targets(store):
    config = _only("segment", cross_case_prob=1.0, binary_prob=1.0, augment=NO_AUGMENT)
    dataset = InContextDataset(store, config, length=10, seed=4)
    for index in range(10):
        sample = dataset[index]
        ((prompt_case, *_),) = _find(store, sample["prompt_image"])
        assert prompt_case != sample["case_id"]
        kept = set(np.unique(sample["prompt_target"])) - {0}
        assert len(kept) == 1  # one structure, keeping its label value
        assert set(np.unique(sample["query_target"])) <= {0, *kept}


def test_denoising_degrades_a_clean_slice_with_one_noise_model_for_both_halves(store):
    config = _only("denoise", datasets={"B": 0.0}, augment=NO_AUGMENT)
    dataset = InContextDataset(store, config, length=10, seed=5)
    for index in range(10):
        sample = dataset[index]
        assert _find(store, sample["query_target"]) and _find(store, sample["prompt_target"])
        residuals = [sample[f"{h}_image"] - sample[f"{h}_target"] for h in ("prompt", "query")]
        assert all(r.std() > 0.005 for r in residuals)
        assert not np.allclose(*residuals)  # independent noise draws


def test_denoising_uses_stored_real_pairs(store):
    config = _only("denoise", datasets={"A": 0.0}, real_pair_prob=1.0, augment=NO_AUGMENT)
    sample = InContextDataset(store, config, length=1, seed=6)[0]
    ((case, position, channel),) = _find(store, sample["query_image"])
    assert (case, channel) == ("b0", 0)
    assert _find(store, sample["query_target"], target=True) == {("b0", position, -1)}


def test_inpainting_zeroes_the_hole_and_keeps_the_rest(store):
    dataset = InContextDataset(store, _only("inpaint", holes={"box": 1.0, "brush": 1.0}), length=10, seed=7)
    for index in range(10):
        sample = dataset[index]
        for half, hole_key in (("query", "hole"), ("prompt", "prompt_hole")):
            hole = sample[hole_key]
            assert hole.any() and not hole.all()
            assert np.all(sample[f"{half}_image"][hole] == 0)
            np.testing.assert_array_equal(sample[f"{half}_image"][~hole], sample[f"{half}_target"][~hole])


def test_synthesis_maps_one_channel_to_the_other_of_the_same_slice(store):
    dataset = InContextDataset(store, _only("synthesize", augment=NO_AUGMENT), length=10, seed=8)
    for index in range(10):
        sample = dataset[index]
        for half in ("prompt", "query"):
            sources = _find(store, sample[f"{half}_image"])  # unlabelled slices look alike
            targets = _find(store, sample[f"{half}_target"])
            assert sources and any((case, position, 1 - c) in targets for case, position, c in sources)


def test_cross_case_synthesis_pairs_the_same_channels_of_two_cases(store):
    dataset = InContextDataset(
        store, _only("synthesize", cross_case_prob=1.0, augment=NO_AUGMENT), length=10, seed=14
    )
    for index in range(10):
        sample = dataset[index]
        prompt = _find(store, sample["prompt_image"])
        query = _find(store, sample["query_image"])
        assert {case for case, *_ in query} == {sample["case_id"]}
        assert prompt and sample["case_id"] not in {case for case, *_ in prompt}
        assert {channel for *_, channel in prompt} == {channel for *_, channel in query}  # one direction


def test_task_and_dataset_weights_set_the_mix(store):
    weights = {"tasks": {"segment": 3.0, "denoise": 1.0, "inpaint": 0.0, "synthesize": 0.0}}
    counts = Counter(s["task"] for s in InContextDataset(store, weights, length=400, seed=9))
    assert set(counts) == {"segment", "denoise"}
    assert 0.68 < counts["segment"] / 400 < 0.82
    # denoise: dataset A (3 cases) and B (1 case) are balanced by dataset, not by case count
    counts = Counter(s["dataset"] for s in InContextDataset(store, _only("denoise"), length=300, seed=10))
    assert 0.4 < counts["B"] / 300 < 0.6
    counts = Counter(
        s["dataset"] for s in InContextDataset(store, {"datasets": {"A": 0}}, length=50, seed=11)
    )
    assert counts == {"B": 50}


def test_a_view_of_some_cases_accepts_weights_for_all_datasets_of_the_store(store):
    view = copy.copy(store)
    view.cases = [case for case in store.cases if case.dataset == "B"]
    counts = Counter(
        s["case_id"] for s in InContextDataset(view, {"datasets": {"A": 2.0, "B": 1.0}}, length=20)
    )
    assert set(counts) == {"b0"}


def test_samples_are_a_pure_function_of_seed_epoch_and_index(store):
    first, again = InContextDataset(store, length=8, seed=12), InContextDataset(store, length=8, seed=12)
    for index in range(8):
        a, b = first[index], again[index]
        assert a["task"] == b["task"]
        for key in ("prompt_image", "query_image", "prompt_target", "query_target", "hole"):
            np.testing.assert_array_equal(a[key], b[key])
    again.set_epoch(1)
    assert any(not np.array_equal(first[i]["query_image"], again[i]["query_image"]) for i in range(8))
    with pytest.raises(IndexError):
        first[8]


def test_dataloader_workers_reproduce_the_sequential_stream(store):
    dataset = InContextDataset(store, length=12, seed=13)
    sequential = collate([dataset[i] for i in range(12)])
    loader = DataLoader(dataset, batch_size=12, num_workers=2, collate_fn=collate)
    (batch,) = list(loader)
    assert batch["task"] == sequential["task"]
    for key in ("prompt_image", "query_image", "prompt_target", "query_target", "hole"):
        torch.testing.assert_close(batch[key], sequential[key])
    labels = batch["query_target"][batch["is_label"]]
    assert torch.equal(labels, labels.round()) and batch["query_target"].dtype == torch.float32


def test_bad_configs_are_named(store):
    with pytest.raises(ValueError, match="unknown name 'segmentation'"):
        InContextDataset(store, {"tasks": {"segmentation": 1.0}})
    with pytest.raises(ValueError, match="unknown keys"):
        InContextDataset(store, {"task": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        InContextDataset(store, {"augment": {"rotate": 10}})
    with pytest.raises(ValueError, match="weight >= 0"):
        InContextDataset(store, {"holes": {"box": -1.0}})
    with pytest.raises(ValueError, match="probability"):
        InContextDataset(store, {"binary_prob": 2.0})
    with pytest.raises(ValueError, match="not in store"):
        InContextDataset(store, {"datasets": {"C": 1.0}})
    with pytest.raises(ValueError, match="no task can be sampled"):
        InContextDataset(store, {"tasks": {"synthesize": 1.0, "segment": 0.0}, "datasets": {"A": 0.0}})
    with pytest.raises(ValueError, match="noise"):
        InContextDataset(store, {"noise": {"CT": {"gaussian": 0.0}}})
    assert SamplerConfig.from_dict({"augment": {"crop_scale": [0.5, 1.0]}}).augment.crop_scale == (0.5, 1.0)


WIDE = (-1000.0, 400.0)
PAPER = (-100.0, 200.0)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory) -> SliceStore:
    """Dataset "C": 2 cases of a CT channel stored in the [-1000, 400] HU window beside an MR
    channel stored from [0, 500], with labels and a real clean CT target."""
    rng = np.random.default_rng(3)
    out = tmp_path_factory.mktemp("stores") / "wide"
    source = {"intensity": [list(WIDE), [0.0, 500.0]], "target_intensity": list(WIDE)}
    with StoreWriter(out, SIZE, 0) as writer:
        for case in range(2):
            labels = _blocks(rng, 4)
            images = rng.uniform(0, 1, (4, 2, SIZE, SIZE)).astype(np.float32)
            target = rng.uniform(0, 1, (4, SIZE, SIZE)).astype(np.float32)
            writer.add_case(
                f"c{case}",
                "C",
                ("CT", "MR"),
                ALL_TASKS,
                images,
                tuple(range(4)),
                tuple(bool(x.any()) for x in labels),
                label=labels,
                target=target,
                source=source,
            )
    return SliceStore(out)


def _windowed(tiles: np.ndarray, stored: tuple[float, float], window: tuple[float, float]) -> np.ndarray:
    """Stored [0, 1] tiles of window ``stored`` as the [0, 1] values of ``window``."""
    hu = tiles.astype(np.float64) * (stored[1] - stored[0]) + stored[0]
    return np.clip((hu - window[0]) / (window[1] - window[0]), 0, 1)


def _stack(store: SliceStore, channel: int | None) -> np.ndarray:
    """Every stored tile of ``channel`` (None: the targets), all cases, as one (n, S, S) array."""
    tiles = [
        store.target(case, p) if channel is None else store.image(case, p, channel)
        for case in store.cases
        for p in range(len(case.slices))
    ]
    return np.stack(tiles)


def _matches(tile: np.ndarray, candidates: np.ndarray) -> int:
    return int(sum(np.allclose(tile, c, atol=2e-3) for c in candidates))


def test_ct_windows_rewindow_ct_channels_per_task_and_leave_others_stored(wide_store):
    windows = {"segment": "paper", "synthesize": [-1000, 0]}
    config = _only("segment", pairing="independent", augment=NO_AUGMENT, ct_windows=windows)
    ct, mr = _stack(wide_store, 0), _stack(wide_store, 1)
    ct_paper = _windowed(ct, WIDE, PAPER)
    channels = Counter()
    for seed in range(12):
        sample = InContextDataset(wide_store, config, length=1, seed=seed)[0]
        for half in ("prompt", "query"):
            tile = sample[f"{half}_image"]
            assert _matches(tile, ct) == 0  # never the stored CT values
            in_ct, in_mr = _matches(tile, ct_paper), _matches(tile, mr)
            assert in_ct + in_mr == 1
            channels["CT" if in_ct else "MR"] += 1
    assert channels["CT"] and channels["MR"]
    # the paper window clips much of a uniform [-1000, 400] HU ramp: re-windowing really happened
    assert (_windowed(ct, WIDE, PAPER) == 0).mean() > 0.5
    # a task ct_windows does not name reads the stored window
    denoise = InContextDataset(wide_store, _only("denoise", augment=NO_AUGMENT, ct_windows=windows), seed=1)
    assert _matches(denoise[0]["query_target"], np.concatenate([ct, mr])) == 1
    # synthesis re-windows its CT sources (channel 0, the stored target) to its own window; MR stays
    synth_tiles = [
        _windowed(ct, WIDE, (-1000.0, 0.0)),
        _windowed(_stack(wide_store, None), WIDE, (-1000.0, 0.0)),
        mr,
    ]
    for seed in range(6):
        sample = InContextDataset(
            wide_store, _only("synthesize", augment=NO_AUGMENT, ct_windows=windows), seed=seed
        )[0]
        for key in ("query_image", "query_target"):
            assert _matches(sample[key], ct) == 0
            assert sum(_matches(sample[key], tiles) for tiles in synth_tiles) == 1


def test_ct_windows_rewindow_stored_real_denoising_targets(wide_store):
    config = _only("denoise", real_pair_prob=1.0, augment=NO_AUGMENT, ct_windows={"denoise": "paper"})
    sample = InContextDataset(wide_store, config, length=1, seed=4)[0]
    assert _matches(sample["query_target"], _windowed(_stack(wide_store, None), WIDE, PAPER)) == 1
    assert _matches(sample["query_image"], _windowed(_stack(wide_store, 0), WIDE, PAPER)) == 1


def test_bad_ct_windows_are_named(store, wide_store):
    with pytest.raises(ValueError, match=r"ct_windows names unknown tasks \['segmentation'\]"):
        InContextDataset(wide_store, {"ct_windows": {"segmentation": "wide"}})
    with pytest.raises(ValueError, match="unknown CT window 'lungs'"):
        InContextDataset(wide_store, {"ct_windows": {"segment": "lungs"}})
    with pytest.raises(
        ValueError, match=r"\[-1350, 150\] HU lies outside the window \[-1000, 400\].*case 'c0'"
    ):
        InContextDataset(wide_store, {"ct_windows": {"segment": "lung"}})
    # store "B"'s CT case was written without its stored range: re-windowing it is refused by name
    with pytest.raises(ValueError, match="case 'b0' of dataset 'B' records no stored intensity range"):
        InContextDataset(store, {"ct_windows": {"denoise": "paper"}})


def _run_without_simpleitk(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where ``import SimpleITK`` fails; it must exit 0."""
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['SimpleITK'] = None\n" + code],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_store_and_samplers_work_without_simpleitk(store):
    code = (
        "import sys\n"
        "from MVGCore.data.samplers import InContextDataset\n"
        f"sample = InContextDataset({str(store.path)!r}, length=2)[1]\n"
        "assert 'SimpleITK' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(sample['task'])\n"
    )
    result = _run_without_simpleitk(code)
    assert result.stdout.strip() in ALL_TASKS


def test_registration_users_name_the_missing_simpleitk_before_any_work(store):
    """Aligned prompts (training pairs and inference) need SimpleITK; without it the error says
    which option asked for it, in one line."""
    code = (
        "import numpy as np\n"
        "from MVGCore.data.samplers import InContextDataset\n"
        "from MVGCore.config import config_for\n"
        "from MVGCore.model import MVGModel\n"
        "from MVGCore.predict import Predictor\n"
        "model = MVGModel(config_for('tiny', tile_size=32, depth=2, embed_dim=48, num_heads=2, merge_index=0,"
        " feature_blocks=(1,), decoder_dim=8))\n"
        "from MVGCore.types import Prompt\n"
        "for make in (\n"
        f"    lambda: InContextDataset({str(store.path)!r}, {{'align_prompts': 'demons'}}),\n"
        "    lambda: Predictor(model, device='cpu').segment(\n"
        "        np.zeros((2, 8, 8)), [Prompt(np.zeros((8, 8)), np.ones((8, 8), np.uint8), 0)]\n"
        "    ),\n"
        "):\n"
        "    try:\n"
        "        make()\n"
        "    except ModuleNotFoundError as error:\n"
        "        print(error)\n"
    )
    result = _run_without_simpleitk(code)
    assert result.stdout.splitlines() == [
        "sampler config align_prompts='demons' needs SimpleITK (pip install SimpleITK), which is not "
        "installed",
        "option align_prompts='demons' (pass 'off' to segment without it) needs SimpleITK (pip install "
        "SimpleITK), which is not installed",
    ]


@pytest.mark.slow
def test_tiny_training_run_on_phantom_nifti(tmp_path):
    """Phantom NIfTI -> prepare -> sampler -> canvases -> model: the loss on held-out samples falls."""
    from MVGCore.canvas import build_canvases
    from MVGCore.coloring import color_table
    from MVGCore.config import MVGConfig
    from MVGCore.data.phantoms import write_nnunet_dataset
    from MVGCore.data.sources import load_cases
    from MVGCore.loss import mvg_loss, pixel_weights
    from MVGCore.masking import MaskSampler
    from MVGCore.model import build_model
    from MVGCore.prepare import prepare

    root = write_nnunet_dataset(tmp_path, 3, (12, 48, 48), 2, seed=0)
    store = SliceStore(prepare(load_cases(root), tmp_path / "store", size=32))
    config = MVGConfig(
        tile_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, merge_index=1,
        feature_blocks=(1, 3), decoder_dim=16, drop_path_rate=0.0,
    )  # fmt: skip
    model = build_model(config)
    masks = MaskSampler(config.grid)

    def loss_of(batch: dict, rng: np.random.Generator) -> torch.Tensor:
        total = torch.zeros(())
        for segmentation in (True, False):
            rows = batch["is_label"] == segmentation
            if not rows.any():
                continue
            prompt_target, query_target = batch["prompt_target"][rows], batch["query_target"][rows]
            tables = None
            if segmentation:
                prompt_target, query_target = prompt_target.long(), query_target.long()
                classes = [np.unique(t.numpy()) for t in prompt_target]
                tables = torch.stack([torch.as_tensor(color_table(c, "random", rng)) for c in classes])
            canvases = build_canvases(
                batch["prompt_image"][rows], prompt_target, batch["query_image"][rows], query_target,
                segmentation=segmentation, tables=tables,
            )  # fmt: skip
            tasks = [t for t, keep in zip(batch["task"], rows.tolist()) if keep]
            mask = torch.as_tensor(np.stack([masks(t, rng) for t in tasks]))
            pred = model(canvases.images, canvases.targets, mask)
            weights = pixel_weights(canvases.foreground, torch.full((len(tasks),), segmentation))
            loss = mvg_loss(
                pred, canvases.targets, canvases.targets01, mask, weights, config.grid, config.patch_size
            )
            total = total + loss * len(tasks) / len(batch["task"])
        return total

    held_out = collate([InContextDataset(store, length=16, seed=99)[i] for i in range(16)])
    train = DataLoader(InContextDataset(store, length=8 * 80, seed=1), batch_size=8, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.eval()
    with torch.no_grad():
        before = float(loss_of(held_out, np.random.default_rng(5)))  # same masks and colors
    model.train()
    rng = np.random.default_rng(0)
    for batch in train:
        optimizer.zero_grad()
        loss_of(batch, rng).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_of(held_out, np.random.default_rng(5)))
    print(f"held-out loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)
