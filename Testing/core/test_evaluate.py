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
    common = ["mvg-average", "mvg-feature", "classical-affine"]
    peers = {
        "segment": ["copy-nearest", "fill-between"],
        "synthesize": ["histogram-match"],
        "denoise": ["noisy-input"],
    }
    for task in ("segment", "denoise", "inpaint", "synthesize"):
        assert f"### {task}" in printed
        methods = common + peers.get(task, [])  # the quick peers answer only their task
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
    filled = summary["summary"]["segment"]["fill-between"]["dice"]
    assert filled["n"] + filled["n_nan"] == 2  # phantom 1 is labelled on its 2 prompt slices only
    assert "histogram-match" not in summary["summary"]["denoise"]
    for number in range(2):  # the noisy input is scored as it came: worse than the classical denoiser
        record = json.loads((out / "cases" / f"Phantom__phantom_{number:03d}__denoise.json").read_text())
        assert record["methods"]["noisy-input"]["psnr"] < record["methods"]["classical-affine"]["psnr"]
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
    with pytest.raises(SystemExit):  # --baselines with no name used to run none, silently
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(dataset),
                "--baselines",
                "--out",
                str(tmp_path / "v"),
            ]
        )
    assert not (tmp_path / "v").exists()
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


def _single_images(tmp_path, count: int, dataset: str = "xray") -> list:
    """``count`` one-slice radiographs of different sizes with a labelled bright band each."""
    from MVGCore.data.sources import Case
    from MVGCore.io import write_volume
    from MVGCore.types import Volume

    rng = np.random.default_rng(0)
    cases = []
    for number in range(count):
        shape = (1, 40 + 4 * number, 48)
        image = rng.random(shape).astype(np.float32) * 0.2
        label = np.zeros(shape, dtype=np.uint8)
        label[0, 10:30, 5 + number : 40] = 1
        image[label > 0] += 0.7
        paths = [
            write_volume(tmp_path / f"{dataset}{number}{suffix}.nrrd", Volume(array))
            for suffix, array in (("", image), ("_label", label))
        ]
        tasks = ("segment", "denoise", "inpaint")
        cases.append(Case(f"{dataset}{number}", dataset, (paths[0],), ("XR",), label=paths[1], tasks=tasks))
    return cases


def test_single_images_take_prompts_from_other_images_of_their_dataset(tmp_path, checkpoint):
    cases = _single_images(tmp_path, 3)
    trial = make_trial(cases[1], "denoise", Settings(n_prompts=2), 1, [(0, cases[0]), (2, cases[2])])
    assert trial.single and trial.prompt_source == "dataset" and trial.prompt_slices == []
    assert [p.image.shape for p in trial.prompts] == [(40, 48), (48, 48)]  # the other images, as they are
    again = make_trial(cases[0], "denoise", Settings(n_prompts=2), 0, [(1, cases[1])])
    assert np.array_equal(again.prompts[0].image, trial.volume[0])  # a donor is posed as it is as a query
    methods = build_methods(Predictor.from_checkpoint(checkpoint, device="cpu"), ["classical-affine"])
    records = evaluate(cases, methods, tmp_path / "r", Settings(tasks=("segment", "denoise", "inpaint")))
    assert len(records) == 9  # every image, every task: none skipped
    for record in records:
        assert record["prompt_source"] == "dataset"
        # copying / filling between slices need slices of a volume; the noisy input answers denoising
        expected = {"mvg", "classical-affine"} | ({"noisy-input"} if record["task"] == "denoise" else set())
        assert set(record["methods"]) == expected
        for values in record["methods"].values():
            assert all(np.isfinite(v) for k, v in values.items() if k not in ("hd95", "psnr_hole"))
    dice = [r["methods"]["classical-affine"]["dice"] for r in records if r["task"] == "segment"]
    assert min(dice) > 0.5  # the band registers between images: the scores are real
    table = summary_table(records, [m.name for m in methods])
    assert "copy-nearest" not in table and "| mvg |" in table


def test_single_images_prompted_by_half_of_themselves_are_scored_on_the_other_half(tmp_path):
    (case,) = _single_images(tmp_path, 1)
    trial = make_trial(case, "segment", Settings(single_images="tiles"), 0)
    assert trial.prompt_source == "tiles" and trial.prompts[0].image.shape == (40, 24)
    assert trial.scored[0, :, :24].sum() == 0 and trial.scored[0, :, 24:].all()
    perfect_left_only = trial.truth.copy()
    perfect_left_only[0, :, 24:] = 0  # right only on the prompt half, which is not scored
    assert score(trial, trial.truth, 0)["dice"] == 1.0
    assert score(trial, perfect_left_only, 0)["dice"] == 0.0
    denoise = make_trial(case, "denoise", Settings(single_images="tiles"), 0)
    answer = denoise.scale.denormalize(denoise.truth)
    answer[0, :, :24] = 0.0  # wrong on the prompt half only, which is not scored
    assert score(denoise, answer, 0)["psnr"] > 100 and score(denoise, denoise.volume, 0)["psnr"] < 40
    inpaint = make_trial(case, "inpaint", Settings(single_images="tiles"), 0)
    inpaint.hole[0, :, 24:] = False  # the whole hole on the prompt half: nothing to score inside it
    scores = score(inpaint, inpaint.volume, 0)
    assert np.isnan(scores["psnr_hole"]) and np.isfinite(scores["psnr"])


def test_single_images_without_donors_or_asked_to_skip_are_skipped_with_a_reason(tmp_path, caplog):
    (case,) = _single_images(tmp_path, 1)
    assert make_trial(case, "denoise", Settings(), 0) is None
    assert "no other single image of dataset xray" in caplog.text
    assert make_trial(case, "denoise", Settings(single_images="skip"), 0) is None
    assert "--single-images skip" in caplog.text
    with pytest.raises(ValueError, match="single_images must be one of"):
        Settings(single_images="crops")


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-cases", "-1", "at least 1, got -1"),  # used to drop the last case, silently (issue 37)
        ("--max-cases", "0", "at least 1, got 0"),
        ("--prompts", "0", "at least 1, got 0"),
        ("--k-prompts", "0", "at least 1, got 0"),
        ("--seed", "-1", "at least 0, got -1"),
        ("--batch-size", "0", "at least 1, got 0"),
        ("--max-cases", "2.5", "a whole number >= 1, got '2.5'"),
    ],
)
def test_count_options_are_bounded_while_the_command_line_is_read(tmp_path, capsys, flag, value, expected):
    """The data path does not exist: an error about it would mean the count was checked too late."""
    argv = ["--baselines", "classical", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, flag, value])
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert f"argument {flag}: " in errors[0] and expected in errors[0]
    assert not (tmp_path / "r").exists()


def test_an_unknown_model_option_is_one_line_naming_the_flag_and_key(dataset, checkpoint, tmp_path, capsys):
    """It used to be a TypeError from Predictor options, shown as a traceback (issue 37)."""
    from MVGCore import cli

    argv = ["--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(tmp_path / "r")]
    argv += ["--model-options", "{}", '{"adaptsteps": 3, "zoom": "whole"}', "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, "evaluate", argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert "argument --model-options: " in errors[0] and "'adaptsteps'" in errors[0]
    assert "known options are" in errors[0] and "'zoom'" not in errors[0].split("known")[0]
    assert not (tmp_path / "r").exists()
