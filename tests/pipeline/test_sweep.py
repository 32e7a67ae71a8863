"""`blazefl sweep` and `blazefl sweep-table`: a 2x2 grid times 2 seeds of a tiny config.

Each point must be byte-identical to the single `blazefl run` it stands for (`blazefl diff`
exit 0, even in another execution mode); a re-run skips complete points and resumes an
incomplete one; the table's mean and standard deviation are recomputed here from the
summary files; bad grids end in one line before any work.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.pipeline.sweep import MAX_POINTS, parse_seeds, point_name, value_text
from blazefl.pipeline.sweep_table import find_sweep_runs, parse_point_name
from tests.tiny_configs import TWO_ROUNDS

#: The tiny experiment of these tests: about a second per run.
TINY = list(TWO_ROUNDS)
SETS = [a for item in TINY for a in ("--set", item)]
GRID = ["--grid", "train.lr=0.01,0.05", "--grid", "fl.algorithm=fedavg,fedprox"]
POINTS = [
    f"train.lr={lr},fl.algorithm={algo}/seed={s}"
    for lr in ("0.01", "0.05")
    for algo in ("fedavg", "fedprox")
    for s in (0, 1)
]
Invoke = Callable[..., Result]


def _sweep(blazefl: Invoke, out: Path, *extra: str) -> Result:
    return blazefl("sweep", *GRID, "--seeds", "0,1", "--out", str(out), *SETS, *extra)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, blazefl: Invoke) -> Path:
    """The complete sweep (read only: copy to modify)."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    result = _sweep(blazefl, out, "--mode", "threads", "--workers", "2")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [ln.split(": done in ")[0] for ln in lines[:8]] == [
        f"[{i}/8] {rel}" for i, rel in enumerate(POINTS, 1)
    ]
    return out


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):  # committed files and folders are read-only
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755)
    return dst


def test_every_point_is_a_run_directory_named_by_its_values(sweep_dir: Path) -> None:
    assert sorted(r.rel for r in find_sweep_runs(sweep_dir)) == sorted(POINTS)
    for rel in POINTS:
        assert (sweep_dir / rel / "round-0002" / "manifest.json").is_file(), rel
        assert (sweep_dir / rel / "summary.json").is_file(), rel
    assert (sweep_dir / "sweep.md").is_file() and (sweep_dir / "sweep.json").is_file()


@pytest.mark.parametrize(
    ("lr", "algo", "seed"), [("0.05", "fedprox", 1), ("0.01", "fedavg", 0)], ids=str
)
def test_a_point_equals_the_single_run_it_stands_for(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path, lr: str, algo: str, seed: int
) -> None:
    single = tmp_path / "single"
    result = blazefl(
        "run", "--out", str(single), "--quiet", "--mode", "sequential", *SETS,
        "--set", f"train.lr={lr}", "--set", f"fl.algorithm={algo}", "--set", f"seed={seed}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    point = sweep_dir / f"train.lr={lr},fl.algorithm={algo}" / f"seed={seed}"
    diff = blazefl("diff", str(single), str(point))
    assert diff.exit_code == 0, diff.output
    assert "identical: 2 rounds" in diff.output


def test_rerun_skips_complete_points_and_changes_nothing(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path, snapshot: Callable[[Path], dict[str, str]]
) -> None:
    copy = _writable_copy(sweep_dir, tmp_path / "sweep")
    before = snapshot(copy)
    result = _sweep(blazefl, copy)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("[")] == [
        f"[{i}/8] {rel}: skipped (complete)" for i, rel in enumerate(POINTS, 1)
    ]
    after = snapshot(copy)
    assert after == before  # the table is rewritten with the same bytes


def test_rerun_resumes_an_incomplete_point(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    copy = _writable_copy(sweep_dir, tmp_path / "sweep")
    cut = copy / POINTS[5]
    shutil.rmtree(cut / "round-0002")  # killed during round 2, before its report
    (cut / "summary.json").unlink()
    (cut / "metrics" / "round-0002.json").unlink()
    result = _sweep(blazefl, copy)
    assert result.exit_code == 0, result.output
    points = [ln for ln in result.stderr.splitlines() if ln.startswith("[")]
    assert points[5].startswith(f"[6/8] {POINTS[5]}: done in ")
    assert "resumed after round 1" in points[5]
    assert sum("skipped (complete)" in ln for ln in points) == 7
    diff = blazefl("diff", str(sweep_dir / POINTS[5]), str(cut))
    assert diff.exit_code == 0, diff.output


def test_table_mean_and_std_from_the_summary_files(sweep_dir: Path, blazefl: Invoke) -> None:
    table = json.loads((sweep_dir / "sweep.json").read_text())
    assert table["keys"] == ["train.lr", "fl.algorithm"]
    assert [p["name"] for p in table["points"]] == sorted({p.split("/")[0] for p in POINTS})
    md = (sweep_dir / "sweep.md").read_text()
    for point in table["points"]:
        summaries = [
            json.loads((sweep_dir / point["name"] / f"seed={s}" / "summary.json").read_text())
            for s in (0, 1)
        ]
        assert point["seeds"] == [0, 1]
        lr, algo = (kv.split("=")[1] for kv in point["name"].split(","))
        assert point["values"] == {"train.lr": float(lr), "fl.algorithm": algo}
        cells = []
        for metric in ("test_accuracy", "best_test_accuracy", "test_loss", "train_loss"):
            xs = [s[metric] for s in summaries]
            mean, std = sum(xs) / 2, statistics.stdev(xs)  # n - 1, over the two seeds
            assert point["mean"][metric] == pytest.approx(mean, abs=1e-12)
            assert point["std"][metric] == pytest.approx(std, abs=1e-12)
            assert std == pytest.approx(abs(xs[0] - xs[1]) / 2**0.5)
            cells.append(f"{mean:.4f} ± {std:.4f}")
        assert f"| {lr} | {algo} | 0,1 | {' | '.join(cells)} |" in md
        digests = {r["seed"]: r["digest"] for r in point["runs"]}
        for s in (0, 1):
            show = blazefl("show", str(sweep_dir / point["name"] / f"seed={s}"))
            assert f"digest: {digests[s]}" in show.output
    assert "sample standard deviation over seeds (n - 1)" in md


def test_sweep_table_and_table_flag_print_the_same_table(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    copy = _writable_copy(sweep_dir, tmp_path / "sweep")
    md = (sweep_dir / "sweep.md").read_text()
    flag = _sweep(blazefl, copy, "--table")
    assert flag.exit_code == 0, flag.output
    assert flag.stdout == md and "[1/8]" not in flag.stderr
    table = blazefl("sweep-table", str(copy))
    assert table.exit_code == 0, table.output
    assert table.stdout == md
    assert (copy / "sweep.json").read_bytes() == (sweep_dir / "sweep.json").read_bytes()


def test_table_of_an_incomplete_sweep_is_one_line(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    copy = _writable_copy(sweep_dir, tmp_path / "sweep")
    (copy / POINTS[2] / "summary.json").unlink()
    for args in (["sweep-table", str(copy)], ["sweep", *GRID, "--seeds", "0,1", "--out",
                                              str(copy), *SETS, "--table"]):  # fmt: skip
        result = blazefl(*args)
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert "incomplete: 1 of 8 runs have no report" in result.stderr
        assert POINTS[2] in result.stderr


BAD = [
    ("unknown key", ["--grid", "train.nope=1,2"], "train.nope"),
    ("refused value", ["--grid", "train.lr=0.1,-1"], "train.lr"),
    ("empty list", ["--grid", "train.lr="], "empty"),
    ("empty value", ["--grid", "train.lr=0.1,,0.2"], "empty value"),
    ("no values", ["--grid", "train.lr"], "KEY=V1,V2"),
    ("seed in grid", ["--grid", "seed=1,2"], "--seeds"),
    ("key twice", ["--grid", "train.lr=0.1", "--grid", "train.lr=0.2"], "twice"),
    ("same value twice", ["--grid", "train.lr=0.01,0.010"], "same config value"),
    ("bad seeds", ["--seeds", "0,x"], "--seeds"),
    ("seed twice", ["--seeds", "0-2,1"], "twice"),
    ("set and grid", ["--grid", "train.lr=0.1,0.2", "--set", "train.lr=0.3"], "one of them"),
    (
        "too large",
        [
            "--grid",
            "train.lr=" + ",".join(f"0.{i:03d}" for i in range(1, 41)),
            "--grid",
            "train.momentum=" + ",".join(f"0.{i:02d}" for i in range(30)),
            "--seeds",
            "0",
        ],
        f"at most {MAX_POINTS}",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("args", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_grid_is_one_line_before_any_work(
    blazefl: Invoke, tmp_path: Path, args: list[str], says: str
) -> None:
    out = tmp_path / "sweep"
    result = blazefl("sweep", "--out", str(out), *SETS, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr
    assert not out.exists()


def test_a_point_folder_of_another_config_is_refused_before_any_work(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    # the lr=0.05 run placed where the lr=0.01 point goes: the second point of the plan
    _writable_copy(sweep_dir / POINTS[5], out / "train.lr=0.01,fl.algorithm=fedavg" / "seed=1")
    result = _sweep(blazefl, out)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "train.lr=0.01,fl.algorithm=fedavg/seed=1" in result.stderr
    assert "another config (differs in: train.lr)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.lr=0.01,fl.algorithm=fedavg"]


def test_folder_names_read_back_into_the_grid_values() -> None:
    assert value_text(0.01) == "0.01" and value_text(1e-5) == "1e-05"
    assert value_text(None) == "null" and value_text(True) == "true"
    name = point_name((("data.root", "data/leaf,x=1"), ("train.lr", 0.05)))
    assert "/" not in name and name.count(",") == 1 and name.count("=") == 2
    assert parse_point_name(name) == (("data.root", "data/leaf,x=1"), ("train.lr", "0.05"))
    assert parse_point_name("notes") is None and parse_point_name("a=1,b") is None
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_commands() -> list[list[str]]:
    """The commands of the README's "Sweeps and figures" bash block, split as a shell does."""
    import re
    import shlex

    text = README.read_text()
    section = text[text.index("### Sweeps and figures") :]
    section = section[: re.search(r"\n##+ ", section[4:]).start() + 4]  # type: ignore[union-attr]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(block) == 1
    commands = [
        shlex.split(line, comments=True) for line in block[0].replace("\\\n", " ").splitlines()
    ]
    return [c for c in commands if c]


def test_readme_commands_run_as_written(
    blazefl: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's commands, verbatim, in a folder whose params.yaml is the tiny config."""
    monkeypatch.chdir(tmp_path)
    tree: dict[str, dict[str, object]] = {}
    for item in TINY:
        key, value = item.split("=")
        section, leaf = key.split(".")
        tree.setdefault(section, {})[leaf] = int(value) if value.isdigit() else value
    (tmp_path / "params.yaml").write_text(json.dumps(tree))  # JSON is YAML
    outputs = []
    for argv in _readme_commands():
        assert argv[0] == "blazefl", argv
        result = blazefl(*argv[1:])
        assert result.exit_code == 0, (argv, result.output)
        outputs.append(result)
    sweep = tmp_path / "artifacts" / "sweep"
    assert len(find_sweep_runs(sweep)) == 12
    assert (sweep / "sweep.md").read_text() == outputs[1].stdout
    assert (tmp_path / "accuracy.pdf").read_bytes()[:5] == b"%PDF-"
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "identical: 2 rounds" in outputs[-1].output


@pytest.mark.slow
def test_a_tracked_sweep_logs_every_point_as_a_run_of_one_folder(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    """`--track tensorboard` (or runtime.track): each point a run named by its folder, in
    OUT/tracking; the points' bytes are those of the untracked sweep."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "tracked"
    one = ["--grid", "train.lr=0.01,0.05", "--seeds", "0", "--out", str(out), *SETS]
    result = blazefl("sweep", *one, "--set", "fl.algorithm=fedavg", "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    for lr in ("0.01", "0.05"):
        rel = f"train.lr={lr}/seed=0"
        events = accumulator.EventAccumulator(str(out / "tracking" / "tensorboard" / rel))
        events.Reload()
        assert [s.step for s in events.Scalars("test_accuracy")] == [1, 2]
        same = sweep_dir / f"train.lr={lr},fl.algorithm=fedavg" / "seed=0"
        diff = blazefl("diff", str(same), str(out / rel))
        assert diff.exit_code == 0, diff.output  # tracking never changes a byte
    bad = blazefl("sweep", *one, "--out", str(tmp_path / "bad"), "--track-dir", str(tmp_path))
    assert bad.exit_code == 2 and "--track-dir needs a tracker" in bad.output
    assert not (tmp_path / "bad").exists()  # refused before any point ran
