"""Reports of active-learning runs and comparisons, and the demo that ends in one."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from after.config import ALConfig, TaptConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.loop.compare import compare
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState
from after.report import write_report

FAST = TrainConfig(epochs=3, min_steps=0, batch_size=8, patience=0, lr=1e-3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(corpus: tuple[Manifest, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished entropy run on eGeMAPS features; its folder name needs HTML escaping."""
    m, manifest, folds = corpus
    out = tmp_path_factory.mktemp("runs") / "run <1> & more"
    al = ALConfig(strategy="entropy", schedule=("4", "8", "12"), cold_start="random")
    fold = Folds.from_json(folds, m).get(0)
    cache = str(tmp_path_factory.getbasetemp() / "features")
    run = Run(m, str(manifest), str(folds), fold, "egemaps", al, FAST, out, cache)
    run_loop(run, start_run(run))
    return out


def _images(page: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def _ua_row(markdown: str, name: str) -> list[str]:
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


def test_report_of_a_run(run_dir: Path) -> None:
    files = write_report([run_dir])
    out = run_dir / "report"
    assert files["html"] == out / "report.html"
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {
        "curves.png",
        "time_per_round.png",
        "queried_labels.png",
        "confusion_entropy.png",
    }
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and data[-8:-4] == b"IEND"

    page = files["html"].read_text()
    assert len(_images(page)) == len(pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for fact in (
        "synth",
        "synth_f1",
        "egemaps",
        "entropy",
        "4,8,12",
        "random",
        "logistic regression",
    ):
        assert f"{fact}" in page
    assert "run &lt;1&gt; &amp; more" in page and "<1>" not in page

    state = LoopState.load(run_dir)
    markdown = files["markdown"].read_text()
    assert "Corpus synth; folds synth_f1; seeds 0; backbone egemaps" in markdown
    expected = [f"{100 * r['test_ua']:.1f}" for r in state.rounds]  # one run: no "± 0.0"
    assert _ua_row(markdown, "entropy (n=1)") == [*expected, "-"]
    assert "| strategy | 4 | 8 | 12 | all labels |" in markdown
    # The figure says what its band is, and why its two panels are the same here.
    assert "band: ± 1 sample std over the runs" in page
    assert all(r["test_ua"] == r["test_wa"] for r in state.rounds)  # balanced test set
    assert "UA and WA are equal in every run here" in page
    # A round's stages add up to its time: select_s no longer counts the scoring in it too.
    for r in state.rounds:
        stages = r["train_s"] + r["eval_s"] + r["score_s"] + r["select_s"]
        assert r["round_s"] == pytest.approx(stages, abs=0.01)


def test_report_names_the_tapt_behind_a_backbone(
    run_dir: Path, corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    from after.tapt import run_tapt

    m, _, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    tapt = run_tapt(m, fold, "scratch:tiny", tmp_path / "tapt", TaptConfig(steps=3, log_every=1))
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "backbone": str(tapt)}))

    files = write_report([run])
    assert files["tapt_loss"].read_bytes().startswith(PNG_MAGIC)
    page = files["html"].read_text()
    assert f"{tapt} is scratch:tiny after TAPT on the training audio of fold {fold.name}" in page
    assert "3 steps; loss" in page and "Task-adaptive pre-training (TAPT)" in page


def test_report_of_a_compare_folder(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> None:
    m, manifest, folds_path = corpus
    folds = Folds.from_json(folds_path, m)
    al = ALConfig(schedule=("4", "8"), cold_start="random")
    args = (m, str(manifest), str(folds_path), [folds.get(0)], "egemaps", ["random", "margin"])
    cache = str(tmp_path / "features")
    summary = compare(*args, [0, 1], al, FAST, tmp_path / "cmp", cache_dir=cache, log=print)

    # Asked again with other settings, it refuses to reuse the stale results (an option the
    # frozen-features learner reads: epochs it does not, so they are not compared).
    other = TrainConfig(**{**FAST.to_dict(), "class_weighted": False})
    stale = r"seed0.json: made with other settings \(config.class_weighted True there, False here\)"
    with pytest.raises(AfterError, match=stale):
        compare(*args, [0, 1], al, other, tmp_path / "cmp", cache_dir=cache, log=print)
    other_al = ALConfig(schedule=("4", "12"), cold_start="random")
    with pytest.raises(AfterError, match=r"random_seed0: made with other settings \(al.schedule\)"):
        compare(*args, [0, 1], other_al, FAST, tmp_path / "cmp", cache_dir=cache, log=print)

    files = write_report([tmp_path / "cmp"], tmp_path / "out")
    page = files["html"].read_text()
    assert len(_images(page)) == 5  # curves, time, labels, one confusion matrix per strategy
    assert "all labels, egemaps (n=2)" in page
    markdown = files["markdown"].read_text()
    for name in ("random", "margin"):
        points = summary["strategies"][name]["points"]
        cells = _ua_row(markdown, f"{name} (n=2)")
        for cell, p in zip(cells, points, strict=False):
            ua = p["test_ua"]
            assert cell == f"{100 * ua['mean']:.1f} ± {100 * ua['std']:.1f}"
    # summary.md: budgets as report.md writes them, its terms defined, recall per class.
    text = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| strategy | 4 | 8 | AUC | time vs all labels |" in text
    assert "AUC: the area under the test-UA curve" in text
    assert "Test recall per class (%)" in text and "| all labels |" in text
    recall = summary["per_class_recall"]
    assert set(recall) == {"random", "margin", "all labels"}
    assert set(recall["margin"]) == set(m.labels) and recall["margin"][m.labels[0]]["n"] == 2
    full = [json.loads(p.read_text()) for p in sorted((tmp_path / "cmp" / "full").glob("*.json"))]
    assert len(full) == 2
    mean = 100 * sum(r["test"]["ua"] for r in full) / 2
    assert _ua_row(markdown, "all labels, egemaps (n=2)")[-1].startswith(f"{mean:.1f} ± ")
    # Margin against random, paired by fold and seed, as compare computed it.
    paired = _ua_row(markdown, "margin")
    for cell, point in zip(paired, summary["strategies"]["margin"]["vs_random"], strict=True):
        # Two pairs can never give p < 0.05: the cell is starred, with its 95% interval, and
        # the note says why, with a warning in bold.
        interval = f"[{100 * point['ci_lo']:+.1f}, {100 * point['ci_hi']:+.1f}]"
        assert cell.startswith(f"{100 * point['mean']:+.1f} {interval} (p=")
        assert cell.endswith(", n=2*)")
    assert "n*: too few pairs for the test ever to reach p < 0.05" in markdown
    assert "**Warning: 2 paired run(s): no difference can reach p < 0.05" in markdown
    # curve.csv has more than UA: WA, 95% intervals, and the difference from random.
    with open(tmp_path / "cmp" / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"test_wa_mean", "test_ua_ci_lo", "vs_random_ci_hi", "vs_random_p"} <= set(rows[0])
    margin = [r for r in rows if r["strategy"] == "margin"]
    assert all(r["vs_random_p"] and r["pairs"] == "2" for r in margin)
    assert "Warning: 2 paired run(s)" in text
    assert "Against random" in page and "Wilcoxon" in page


def test_report_command_and_bad_input(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from after.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(run_dir), "--out", str(tmp_path / "r"), "--markdown"])
    assert e.value.code in (0, None)
    assert "| entropy (n=1) |" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.html").is_file()

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(AfterError, match="not_a_run: not a run folder"):
        write_report([run_dir, empty])
    with pytest.raises(AfterError, match="missing: no such folder"):
        write_report([tmp_path / "missing"])
    with pytest.raises(SystemExit) as e:
        main(["report", str(empty)])
    assert e.value.code == 2
    assert "not_a_run" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from after.cli import main
    from after.demo import QUICK, run_demo
    from after.inference import evaluate
    from after.models.classifier import load_classifier

    result = run_demo(tmp_path / "demo", QUICK, log=lambda _: None)
    names = [row[0] for row in result["table"]["rows"]]
    default = f"{ALConfig.strategy} (n=1)"  # the demo compares the default strategy with random
    assert names == [default, "random (n=1)", "all labels, frozen:whisper-tiny.en (n=1)"]
    assert result["report"]["html"].is_file()
    page = result["report"]["html"].read_text()
    assert len(_images(page)) == 6  # and the TAPT section's loss curve
    # The report opens with a verdict in plain words, which the command prints too, and says
    # that one paired run shows nothing; then the TAPT check, said to be a check.
    assert page.index("In plain words") < page.index("Task-adaptive pre-training (TAPT)")
    assert "1 paired run is too few to tell the two apart" in result["verdict"]
    assert "not evidence that it helps" in page and "synthetic corpus" in result["verdict"]
    check = result["finetune"]
    assert check["epochs"] == QUICK.check_epochs
    # Each UA is the mean recall, over the classes tested, of its run's test confusion matrix...
    runs = tmp_path / "demo" / "finetune" / "runs"
    for run, key in [
        ("whisper", "finetuned_ua"),
        ("tapt", "tapt_finetuned_ua"),
        ("frozen", "frozen_ua"),
        ("tapt-frozen", "tapt_frozen_ua"),
    ]:
        (record,) = [json.loads(p.read_text()) for p in (runs / run).glob("*.json")]
        cm = np.array(record["test"]["confusion"])
        recall = [cm[k, k] / cm[k].sum() for k in range(len(cm)) if cm[k].sum()]
        assert check[key] == pytest.approx(np.mean(recall)), run
    # ... and the fine-tuned model the demo keeps scores the same on that fold's test clips.
    assert (tmp_path / "demo" / "finetune" / "model" / "whisper_model.py").is_file()
    model = load_classifier(tmp_path / "demo" / "finetune" / "model")
    manifest = Manifest.from_jsonl(tmp_path / "demo" / "manifest.jsonl")
    fold = Folds.from_json(tmp_path / "demo" / "folds.json", manifest).get(0)
    assert evaluate(model, manifest, fold.test)["ua"] == check["finetuned_ua"]
    assert result["tapt"]["steps"] == QUICK.tapt_steps
    assert (tmp_path / "demo" / "tapt" / "model.safetensors").is_file()  # on fold 0 only
    assert result["report"]["tapt_loss"].read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(AfterError, match=r"demo: holds a demo run with other settings \(seed\)"):
        run_demo(tmp_path / "demo", QUICK, seed=1, log=lambda _: None)

    # The command reuses the finished folder and prints the same table, unwrapped.
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    for row in result["table"]["rows"]:
        assert re.search(r"│ " + r"\s*│\s*".join(map(re.escape, row)) + r"\s*│", out), row
    assert "report.html" in out and result["verdict"] in out


def test_report_of_a_run_without_a_test_split_shows_its_audit_estimate(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    """No folds, no test split: the report says so, and shows the audit estimate with its
    interval and how many audit labels back it, never an empty test figure."""
    from after.loop.runner import whole_pool

    m, manifest, _ = corpus
    al = ALConfig(schedule=("8", "16"), cold_start="random", audit="12")
    cache = str(tmp_path / "features")
    run = Run(m, str(manifest), None, whole_pool(m), "egemaps", al, FAST, tmp_path / "run", cache)
    state = run_loop(run, start_run(run))
    verdict = ("In plain words", "A sentence for people.", None)
    files = write_report([run.run_dir], tmp_path / "out", sections=[verdict])
    markdown = files["markdown"].read_text()
    assert markdown.startswith("## In plain words\n\nA sentence for people.")
    cells = _ua_row(markdown, f"{al.strategy} (n=1)")
    for cell, r in zip(cells, state.rounds, strict=False):
        assert cell == (
            f"{100 * r['audit_ua']:.1f} [{100 * r['audit_ua_lo']:.1f}-"
            f"{100 * r['audit_ua_hi']:.1f}] (n=12)"
        )
    page = re.sub(r"data:image/png;base64,[^\"]*", "", files["html"].read_text())
    assert "no test split; their figures are audit estimates" in page
    assert "Wilson" in page and "UA (%) by label budget" in page and "nan" not in page
    assert page.index("A sentence for people.") < page.index("by label budget")
