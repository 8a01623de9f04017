import json

import numpy as np
import pytest
from PIL import Image

from MVGCore.coloring import palette
from MVGCore.data.phantoms import write_nnunet_dataset
from MVGCore.data.sources import load_cases
from MVGCore.evaluate import Method, Settings, build_methods, evaluate, main, make_trial, score, summary_table
from MVGCore.figures import Panel, montage
from MVGCore.predict import Predictor

SHAPE = (6, 32, 32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_nnunet_dataset(root, n_cases=2, shape=SHAPE, n_classes=2, seed=3, spacing=(1.0, 1.0, 3.0))


class Oracle:
    """Answers every trial with its reference, so every score must be perfect."""

    def __init__(self, trial):
        self.trial = trial

    def segment(self, image, prompts, axis=0, *, cancel=None):
        return self.trial.truth

    def denoise(self, image, prompts=None, axis=0, *, cancel=None):
        return self.trial.scale.denormalize(self.trial.truth)


def test_trials_are_deterministic_and_prompts_shared(dataset):
    case = load_cases(dataset)[0]
    settings = Settings(n_prompts=2, seed=5)
    first, again = make_trial(case, "inpaint", settings, 0), make_trial(case, "inpaint", settings, 0)
    assert first.prompt_slices == again.prompt_slices and len(first.prompt_slices) == 2
    assert np.array_equal(first.volume, again.volume) and np.array_equal(first.hole, again.hole)
    other = make_trial(case, "inpaint", Settings(n_prompts=2, seed=6), 0)
    assert not np.array_equal(first.hole, other.hole)
    noisy = make_trial(case, "denoise", settings, 0)
    assert not np.allclose(noisy.scale.normalize(noisy.volume), noisy.truth)  # the input really is degraded
    seg = make_trial(case, "segment", settings, 0)
    for prompt in seg.prompts:  # prompts are labelled slices of the case itself
        assert prompt.target.any() and np.array_equal(prompt.target, seg.truth[prompt.index])


def test_scores_of_a_perfect_answer(dataset):
    case = load_cases(dataset)[0]
    seg = make_trial(case, "segment", Settings(), 0)
    assert score(seg, seg.truth, 0) == {"dice": 1.0, "hd95": 0.0}
    wrong = np.zeros_like(seg.truth)
    assert score(seg, wrong, 0) == {"dice": 0.0, "hd95": float("inf")}  # every structure missed
    den = make_trial(case, "denoise", Settings(), 0)
    perfect = score(den, den.scale.denormalize(den.truth), 0)
    assert perfect["psnr"] == float("inf") and perfect["ssim"] == pytest.approx(1.0)
    assert score(den, den.volume, 0)["psnr"] < 40  # the noisy input itself is far from perfect
    across = make_trial(case, "inpaint", Settings(axis=2, n_prompts=2), 0)
    assert across.hole.shape == SHAPE and len(across.prompt_slices) == 2
    assert score(across, across.scale.denormalize(across.truth), 2)["psnr_hole"] == float("inf")


def test_report_counts_infinite_scores_instead_of_averaging_them(dataset, tmp_path):
    case = load_cases(dataset)[0]
    trial = make_trial(case, "denoise", Settings(tasks=("denoise",)), 0)
    records = evaluate(
        [case], [Method("oracle", Oracle(trial))], tmp_path / "r", Settings(tasks=("denoise",))
    )
    table = summary_table(records, ["oracle"])
    assert "| oracle | n/a +1 inf |" in table
    saved = json.loads((tmp_path / "r" / "cases" / f"{trial.name}.json").read_text())
    assert saved["methods"]["oracle"]["psnr"] == "inf"


def test_cli_runs_model_and_baseline_on_the_same_trials(dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(out), "--quiet"]
    argv += ["--baselines", "classical-affine", "--prompts", "2", "--k-prompts", "2"]
    assert main([*argv, "--ensemble", "average", "feature", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    table = (out / "summary.md").read_text(encoding="utf-8")  # UTF-8 whatever the locale ("±")
    assert printed.strip().endswith(table.strip())  # the table is printed last
    methods = ["mvg-average", "mvg-feature", "classical-affine"]
    for task in ("segment", "denoise", "inpaint", "synthesize"):
        assert f"### {task}" in printed
        for number in range(2):
            name = f"Phantom__phantom_{number:03d}__{task}"
            record = json.loads((out / "cases" / f"{name}.json").read_text())
            assert sorted(record["methods"]) == sorted(methods) and len(record["prompt_slices"]) == 2
            figure = Image.open(out / "figures" / f"{name}.png")
            panels = 2 + len(methods) + 1 + (0 if task == "segment" else 1)
            assert figure.size[0] == 128 * panels
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["segment"]["classical-affine"]["dice"]["n"] == 2
    assert 0.0 <= summary["summary"]["segment"]["classical-affine"]["dice"]["mean"] <= 1.0
    with pytest.raises(FileExistsError, match="not empty"):
        main(argv)


def test_evaluation_errors(dataset, checkpoint, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="k_prompts >= 2"):
        build_methods(predictor, [], k_prompts=1, ensembles=("average", "feature"))
    with pytest.raises(ValueError, match="unknown baseline"):
        build_methods(predictor, ["nnunet"])
    with pytest.raises(ValueError, match="tasks must be"):
        Settings(tasks=("segmentation",))
    with pytest.raises(ValueError, match="unique"):
        evaluate(load_cases(dataset), [Method("a", predictor), Method("a", predictor)], tmp_path / "x")
    with pytest.raises(SystemExit):
        main(["--data", str(dataset), "--out", str(tmp_path / "y")])  # neither model nor baseline
    with pytest.raises(SystemExit):
        main(["--baselines", "classical", "--out", str(tmp_path / "z")])  # no cases at all
    with pytest.raises(ValueError, match="unknown open sample"):
        main(
            ["--baselines", "classical", "--open-samples", "pyradiomics/lung9", "--out", str(tmp_path / "w")]
        )


def test_montage_draws_labels_in_the_palette(tmp_path):
    image = np.linspace(0, 1, 40 * 30).reshape(40, 30)
    labels = np.zeros((40, 30), dtype=np.uint8)
    labels[:, :15] = 2
    path = montage(
        [[Panel("a", image), Panel("b", image, labels)], [Panel("c", image)]], tmp_path / "f.png", 64
    )
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (2 * (64 + 14), 2 * 64, 3)
    left_of_b = sheet[14 + 32, 64 + 20].astype(float) / 255  # inside the labelled half of panel b
    expected = 0.5 * image[20, 5] + 0.5 * palette()[2]
    assert np.allclose(left_of_b, expected, atol=0.05)
    with pytest.raises(ValueError, match=r"must end in \.png"):
        montage([[Panel("a", image)]], tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="must match image"):
        Panel("bad", image, labels[:10])


def test_single_images_are_skipped_with_a_reason(tmp_path, caplog):
    from MVGCore.data.sources import Case
    from MVGCore.io import write_volume
    from MVGCore.types import Volume

    path = write_volume(
        tmp_path / "xray.nrrd", Volume(np.random.default_rng(0).random((1, 32, 32)).astype(np.float32))
    )
    case = Case("xray", "XR", images=(path,), modalities=("XR",), tasks=("denoise",))
    assert make_trial(case, "denoise", Settings(), 0) is None
    assert "a single image is skipped" in caplog.text
