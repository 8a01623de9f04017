import numpy as np
import pytest
from scipy import ndimage

from MVGCore.baselines import ClassicalBaseline
from MVGCore.intensity import normalize
from MVGCore.metrics import dice_per_class, hd95, psnr, ssim
from MVGCore.types import Cancelled, CancelToken, Prompt


def _moving_disc(slices: int = 5, size: int = 48, shift: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A bright blurred disc that moves ``shift`` pixels along i per slice, and its label."""
    k, j, i = np.mgrid[:slices, :size, :size]
    centre_i = size // 2 + (k - slices // 2) * shift
    label = ((j - size // 2) ** 2 + (i - centre_i) ** 2 <= 10**2).astype(np.uint8)
    image = ndimage.gaussian_filter(label.astype(np.float32) * 100 + 20, sigma=(0, 1.5, 1.5))
    return image, label


@pytest.mark.parametrize("registration", ["affine", "demons", "bspline"])
def test_segment_follows_a_moving_structure_and_keeps_the_prompt(registration):
    image, label = _moving_disc()
    prompt = Prompt.from_volume(image, 2, label[2])
    calls = []
    result = ClassicalBaseline(registration=registration).segment(
        image, [prompt], progress=lambda done, total: calls.append((done, total))
    )
    assert result.shape == image.shape and result.dtype == np.uint8
    assert (result[2] == label[2]).all()
    assert calls[-1] == (5, 5) and [c for c in calls if c[0] == c[1]] == [(5, 5)]
    static_dice = dice_per_class(np.broadcast_to(label[2], label.shape), label)[1]
    dice = dice_per_class(result, label)[1]
    assert dice > 0.9 and dice > static_dice + 0.05  # registration tracks the 2-8 px motion


def test_segment_uses_nearest_indexed_prompt_and_multi_labels():
    image, label = _moving_disc(slices=4)
    label = label * np.array([1, 1, 3, 3], dtype=np.uint8)[:, None, None]
    prompts = [Prompt.from_volume(image, 0, label[0]), Prompt.from_volume(image, 3, label[3])]
    result = ClassicalBaseline(registration="affine").segment(image, prompts)
    assert set(np.unique(result[1])) == {0, 1} and set(np.unique(result[2])) == {0, 3}


def test_segment_along_another_axis_with_unindexed_prompt():
    image, label = _moving_disc()
    volume, truth = np.moveaxis(image, 0, 2), np.moveaxis(label, 0, 2)
    prompt = Prompt(image=image[2], target=label[2].astype(np.int32))  # no index: used for all slices
    result = ClassicalBaseline(registration="affine").segment(volume, [prompt], axis=2)
    assert result.dtype == np.int32 and result.shape == volume.shape
    assert dice_per_class(result, truth)[1] > 0.9


def test_segment_with_a_prompt_of_another_size():
    image, label = _moving_disc()
    prompt = Prompt(image=image[2, 4:44, 2:46], target=label[2, 4:44, 2:46])  # e.g. from another scan
    result = ClassicalBaseline().segment(image, [prompt])
    assert result.shape == image.shape and dice_per_class(result, label)[1] > 0.85


def test_a_blank_slice_gets_the_centred_transform():
    image, label = _moving_disc(slices=3)
    image[0] = 5.0  # nothing to register against (failures warn: test_registration)
    prompt = Prompt.from_volume(image, 1, label[1])
    result = ClassicalBaseline().segment(image, [prompt])
    assert (result[0] == label[1]).all()  # same-size slices: the centred transform is the identity


def test_segment_errors_name_the_problem():
    image, label = _moving_disc(slices=2)
    baseline = ClassicalBaseline()
    with pytest.raises(ValueError, match="at least one prompt"):
        baseline.segment(image, [])
    with pytest.raises(ValueError, match="integer labels"):
        baseline.segment(image, [Prompt(image[0], label[0].astype(np.float32), 0)])
    with pytest.raises(ValueError, match="index 5 is out of range"):
        baseline.segment(image, [Prompt(image[0], label[0], 5)])
    with pytest.raises(ValueError, match="3D"):
        baseline.segment(image[0], [Prompt(image[0], label[0])])
    with pytest.raises(ValueError, match="registration must be one of"):
        ClassicalBaseline(registration="elastix")


def test_copy_nearest_gives_each_slice_the_nearest_prompt_label_as_it_is():
    image, label = _moving_disc(slices=6)
    label = label.astype(np.int32) * 300  # ids beyond 8 bits are copied as they are
    prompts = [Prompt.from_volume(image, 1, label[1]), Prompt.from_volume(image, 4, label[4])]
    calls = []
    result = ClassicalBaseline(segmentation="copy").segment(
        image, prompts, progress=lambda done, total: calls.append((done, total))
    )
    assert result.dtype == np.int32 and calls[-1] == (6, 6)
    for index, nearest in enumerate([1, 1, 1, 4, 4, 4]):  # slice 2.5 is no tie; 1 and 4 are themselves
        assert (result[index] == label[nearest]).all()
    tied = ClassicalBaseline(segmentation="copy").segment(image, [prompts[1], prompts[0]])
    assert (tied[1:4] == result[1:4]).all()  # 2 and 3 are nearer to one prompt each, whatever the order
    with pytest.raises(ValueError, match="slice shape"):
        ClassicalBaseline(segmentation="copy").segment(image, [Prompt(image[0, :40], label[0, :40])])
    with pytest.raises(ValueError, match="segmentation must be one of"):
        ClassicalBaseline(segmentation="nearest")


def test_fill_between_slices_interpolates_and_never_extrapolates():
    k, j, i = np.mgrid[:9, :48, :48]
    radius = 6 + 2 * np.abs(k - 1)  # a disc growing from radius 6 on slice 1 to 14 on slice 5
    disc = (j - 24) ** 2 + (i - 24) ** 2 <= radius**2
    label = np.where(disc, 1000, 0).astype(np.int32)  # a non-contiguous id beyond 16 bits
    label[:, 2:6, 2:6] = np.where(np.arange(9) >= 1, 7, 0)[:, None, None]  # a second structure
    image = label.astype(np.float32)
    prompts = [Prompt.from_volume(image, 1, label[1]), Prompt.from_volume(image, 5, label[5])]
    result = ClassicalBaseline(segmentation="fill").segment(image, prompts)
    assert result.dtype == np.int32 and set(np.unique(result)) == {0, 7, 1000}
    assert (result[1] == label[1]).all() and (result[5] == label[5]).all()
    between = slice(2, 5)
    filled = dice_per_class(result[between], label[between])
    copied = ClassicalBaseline(segmentation="copy").segment(image, prompts)
    assert filled[1000] > 0.95 and filled[1000] > dice_per_class(copied[between], label[between])[1000] + 0.03
    assert filled[7] == 1.0
    assert not result[[0, 6, 7, 8]].any()  # outside the prompts' range: empty, as in Slicer
    along_i = ClassicalBaseline(segmentation="fill").segment(
        np.moveaxis(image, 0, 2),
        [
            Prompt.from_volume(np.moveaxis(image, 0, 2), 1, label[1], axis=2),
            Prompt.from_volume(np.moveaxis(image, 0, 2), 5, label[5], axis=2),
        ],
        axis=2,
    )
    assert (along_i == np.moveaxis(result, 0, 2)).all()
    with pytest.raises(ValueError, match="slices of the volume itself"):
        ClassicalBaseline(segmentation="fill").segment(image, [Prompt(image[1], label[1])])


def test_fill_between_without_the_itk_package_says_what_to_install(monkeypatch):
    from MVGCore import contour_interpolation

    monkeypatch.setattr(contour_interpolation, "DISTRIBUTION", "no-such-itk-package")
    with pytest.raises(ValueError, match="pip install no-such-itk-package"):
        ClassicalBaseline(segmentation="fill")


def test_fill_between_cancel_kills_the_itk_child():
    from MVGCore.contour_interpolation import interpolate

    labels = np.zeros((3, 16, 16), dtype=np.uint8)
    labels[0, 4:8, 4:8] = labels[2, 4:10, 4:10] = 1
    polls = []

    def cancel_at_first_poll():
        polls.append(1)
        raise Cancelled()

    with pytest.raises(Cancelled):
        interpolate(labels, 0, check=cancel_at_first_poll)  # the child needs seconds to import itk
    assert polls == [1]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        ClassicalBaseline(segmentation="fill").segment(
            labels.astype(np.float32), [Prompt.from_volume(labels, 0, labels[0])], cancel=token
        )


def test_cancel_between_slices():
    image, label = _moving_disc()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        ClassicalBaseline().segment(image, [Prompt.from_volume(image, 2, label[2])], cancel=token)


def _smooth_volume(slices: int = 2, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(1)
    return ndimage.gaussian_filter(rng.random((slices, size, size)), sigma=(0, 4, 4)).astype(np.float32) * 4


@pytest.mark.parametrize("use_bm3d", [False, True])
def test_denoise_improves_psnr_in_input_units(use_bm3d):
    if use_bm3d:
        pytest.importorskip("bm3d")
    clean = _smooth_volume(slices=4, size=32) * 100  # arbitrary units: the baseline must not assume [0, 1]
    noisy = clean + np.random.default_rng(2).normal(0, 5, clean.shape).astype(np.float32)
    axis = 0 if use_bm3d else 1  # BM3D needs slices of at least 8x8 and costs ~0.3 s per call
    result = ClassicalBaseline(use_bm3d=use_bm3d).denoise(noisy, axis=axis)
    assert result.dtype == np.float32 and result.shape == clean.shape
    data_range = float(clean.max() - clean.min())
    assert psnr(result, clean, data_range) > psnr(noisy, clean, data_range) + 3


def test_inpaint_fills_the_hole_and_keeps_the_rest():
    j, i = np.mgrid[:32, :32]
    image = np.stack([2.0 * j + 3.0 * i, 50.0 - i]).astype(np.float32)  # linear: biharmonic is exact
    hole = np.zeros(image.shape, dtype=bool)
    hole[0, 10:20, 12:18] = True
    damaged = np.where(hole, 0.0, image).astype(np.float32)
    result = ClassicalBaseline().inpaint(damaged, hole)
    assert (result[~hole] == damaged[~hole]).all()
    np.testing.assert_allclose(result[hole], image[hole], atol=0.05)
    full = np.ones(image.shape, dtype=bool)
    with pytest.raises(ValueError, match="covers all of slice 0"):
        ClassicalBaseline().inpaint(damaged, full)
    with pytest.raises(ValueError, match="hole_mask shape"):
        ClassicalBaseline().inpaint(damaged, hole[0])


def test_synthesis_monotone_learns_a_decreasing_map_histogram_cannot():
    source = _smooth_volume(slices=3) * 100
    target = 1000.0 - 2.0 * source  # an inverted contrast, like T1 -> T2 for some tissues
    prompt = Prompt.from_volume(source, 0, target[0])
    monotone = ClassicalBaseline(synthesis_mapping="monotone").synthesize(source, [prompt])
    histogram = ClassicalBaseline(synthesis_mapping="histogram").synthesize(source, [prompt])
    assert (monotone[0] == target[0]).all() and (histogram[0] == target[0]).all()  # prompt kept
    data_range = float(target.max() - target.min())
    # slices 1 and 2 were never seen; values outside the prompt's range are clamped by np.interp
    assert psnr(monotone[1:], target[1:], data_range) > 30
    assert psnr(histogram[1:], target[1:], data_range) < 15


def test_synthesis_histogram_maps_an_increasing_nonlinear_contrast():
    source = _smooth_volume(slices=3) * 100
    target = np.sqrt(source) * 10
    prompts = [Prompt(image=source[0], target=target[0])]
    result = ClassicalBaseline().synthesize(source, prompts)
    data_range = float(target.max() - target.min())
    assert psnr(result[1:], target[1:], data_range) > 30


def test_synthesis_match_follows_each_slice_where_one_map_cannot():
    source = _smooth_volume(slices=3) * 100
    target = np.sqrt(source) * 10
    drifted = source + np.array([0.0, 50.0, 120.0], dtype=np.float32)[:, None, None]  # bias drift by slice
    prompt = Prompt.from_volume(drifted, 0, target[0])
    matched = ClassicalBaseline(synthesis_mapping="match").synthesize(drifted, [prompt])
    one_map = ClassicalBaseline(synthesis_mapping="histogram").synthesize(drifted, [prompt])
    assert matched.dtype == np.float32 and (matched[0] == target[0]).all()
    data_range = float(target.max() - target.min())
    assert psnr(matched[1:], target[1:], data_range) > 20  # measured 22.9: slices differ in histogram
    assert psnr(one_map[1:], target[1:], data_range) < 15  # drifted values fall off the learnt map


# --- end to end on real images (pyradiomics sample scans, see docs/metrics.md) ---


def _real(case_id: str, slices: slice, roi: tuple[slice, slice]):
    from MVGCore.data import open_samples

    image, label = open_samples.load(case_id)
    crop = (slices, *roi)
    return image.array[crop], label.array[crop], image.geometry.spacing_kji


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case_id", "slices", "roi", "min_dice"),
    [
        # lung tumour on 3 slices of 5 mm; brain lesion on 7 slices of 6.5 mm (changes a lot)
        ("pyradiomics/lung1", slice(32, 35), (slice(280, 440), slice(140, 300)), 0.8),
        ("pyradiomics/brain1", slice(11, 18), (slice(40, 200), slice(110, 250)), 0.35),
    ],
)
def test_segment_real_scan_beats_copying_the_prompt_label(case_id, slices, roi, min_dice):
    image, label, spacing = _real(case_id, slices, roi)
    middle = image.shape[0] // 2
    result = ClassicalBaseline().segment(image, [Prompt.from_volume(image, middle, label[middle])])
    others = [k for k in range(image.shape[0]) if k != middle]
    copied = np.broadcast_to(label[middle], label.shape)
    dice = dice_per_class(result[others], label[others])[1]
    assert (result[middle] == label[middle]).all()
    assert dice > min_dice and dice > dice_per_class(copied[others], label[others])[1] + 0.05
    assert np.isfinite(hd95(result[others], label[others], spacing))


@pytest.mark.slow
@pytest.mark.parametrize("use_bm3d", [False, True])
def test_denoise_real_ct(use_bm3d):
    if use_bm3d:
        pytest.importorskip("bm3d")
    image, _, _ = _real("pyradiomics/lung1", slice(30, 32), (slice(200, 328), slice(180, 308)))
    clean = normalize(image, "CT", "lung")
    noisy = clean + np.random.default_rng(0).normal(0, 0.05, clean.shape).astype(np.float32)
    result = ClassicalBaseline(use_bm3d=use_bm3d).denoise(noisy)
    assert psnr(result, clean) > psnr(noisy, clean) + 6  # measured: NLM +9.3 dB, BM3D +11.6 dB
    assert ssim(result, clean) > ssim(noisy, clean) + 0.3


@pytest.mark.slow
def test_inpaint_real_mr_beats_mean_fill_inside_the_hole():
    image, _, _ = _real("pyradiomics/brain1", slice(13, 15), (slice(None), slice(None)))
    clean = normalize(image, "MR")
    hole = np.zeros(clean.shape, dtype=bool)
    hole[:, 100:116, 120:136] = True
    result = ClassicalBaseline().inpaint(np.where(hole, 0.0, clean), hole)
    mean_fill = np.where(hole, clean[~hole].mean(), clean)
    assert psnr(result, clean, mask=hole) > psnr(mean_fill, clean, mask=hole) + 5
    assert ssim(result, clean, mask=hole) > ssim(mean_fill, clean, mask=hole)


@pytest.mark.slow
def test_synthesize_real_mr_with_a_known_contrast_change():
    """No real paired modalities are available here (docs/metrics.md), so the target is the real
    MR slice under a known, inverted, non-linear contrast; the map is learned from one slice."""
    image, _, _ = _real("pyradiomics/brain1", slice(10, 16), (slice(None), slice(None)))
    source = normalize(image, "MR")
    noise = np.random.default_rng(0).normal(0, 0.02, source.shape)
    target = np.clip((1.0 - source) ** 2 + noise, 0, 1)  # noise: the map is not a pure lookup
    prompt = Prompt.from_volume(source, 0, target[0])
    monotone = ClassicalBaseline(synthesis_mapping="monotone").synthesize(source, [prompt])
    histogram = ClassicalBaseline(synthesis_mapping="histogram").synthesize(source, [prompt])
    assert psnr(monotone[1:], target[1:]) > 30  # the noise alone caps it near 34 dB
    assert ssim(monotone[1:], target[1:]) > 0.8  # the true map scores 0.85 against the noisy target
    assert psnr(histogram[1:], target[1:]) < 10  # quantile maps are increasing: wrong way round
