"""The benchmark's report: every target of issue 3 is judged from the results, none by hand."""

from benchmarks.run import TARGETS, overhead_row, render_targets


def results(**models: dict) -> dict:
    return {
        "models": models,
        "overhead": {"ratio": 1.10},
        "preprocess": {"ratio": 1.32},
        "dvc": {"dvc_repro_noop_seconds": 0.7},
    }


def row(lines: list[str], name: str) -> list[str]:
    (line,) = [line for line in lines if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_target_is_judged_against_its_target_and_floor() -> None:
    lines = render_targets(
        results(
            fasttext={"test_accuracy": 0.8615, "train_seconds": 14.2, "peak_rss_mb": 1052},
            lstm={"test_accuracy": 0.806},
            transformer={"test_accuracy": 0.77},
        )
    )
    assert len(lines) == 2 + len(TARGETS)
    assert row(lines, "`fasttext` test accuracy") == ["`fasttext` test accuracy", "≥ 86.0%", "≥ 85.0%", "86.2%", "met"]
    assert row(lines, "`lstm` test accuracy")[-1] == "floor met, target not"
    assert row(lines, "`transformer` test accuracy")[-2:] == ["77.0%", "**not met**"]
    assert row(lines, "train stage / bare loop")[-2:] == ["1.10×", "floor met, target not"]
    assert row(lines, "preprocess / CountVectorizer")[-1] == "**not met**"  # no floor: below target is not met
    assert row(lines, "no-op `dvc repro`")[-1] == "met"


def test_a_preset_that_was_not_run_is_reported_as_not_measured() -> None:
    lines = render_targets(results(fasttext={"test_accuracy": 0.87, "train_seconds": 40.0, "peak_rss_mb": 900}))
    assert row(lines, "`fasttext_wide` test accuracy")[-2:] == ["not measured", ""]
    assert row(lines, "`fasttext` training time")[-2:] == ["40 s", "**not met**"]


def test_the_overhead_row_shows_the_spread_of_runs_and_of_pair_ratios() -> None:
    overhead = {
        "epochs": 6,
        "pipeline_seconds": 18.0,
        "bare_seconds": 15.0,
        "ratio": 1.2,
        "pipeline_runs": [18.0, 17.0, 21.0],
        "bare_runs": [15.0, 16.0, 14.0],
    }
    cells = [cell.strip() for cell in overhead_row(overhead).strip("|").split("|")]
    assert cells == [
        "fasttext train stage vs bare PyTorch loop, 6 epochs",
        "18.0 s (runs 17.0–21.0)",
        "15.0 s (runs 14.0–16.0)",
        "1.20× (pairs 1.06–1.50)",
    ]
