"""mometas_utils.plots and its command line, plot_sampler_history.py."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mometas_utils.history import HistoryWriter
from mometas_utils.plots import PLOT_FILENAMES, plot_history

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def write_run(run_dir, rows):
    writer = HistoryWriter(run_dir)
    for row in rows:
        writer.write(row)


def load_cli():
    spec = importlib.util.spec_from_file_location("plot_sampler_history", ROOT / "plot_sampler_history.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_history_writes_all_pngs_with_baseline(tmp_path, make_history):
    paths = plot_history(make_history(), tmp_path / "plots",
                         baseline_rows=make_history(sampler="uniform", k=150, n=4, drift=0.0, reward_scale=0.02))
    assert [p.name for p in paths] == list(PLOT_FILENAMES)
    for path in paths:
        assert_png(path)


def test_plot_history_skips_missing_data(tmp_path, make_history):
    rows = make_history(with_val=False)
    for row in rows:
        row["reward"] = None
    paths = plot_history(rows, tmp_path)
    assert [p.name for p in paths] == ["probabilities.png", "average_weights.png"]
    for path in paths:
        assert_png(path)
    assert plot_history([{"step": 0}, {"step": 100}], tmp_path / "empty") == []


def test_cli_end_to_end_with_baseline(tmp_path, make_history):
    write_run(tmp_path / "mometas", make_history())
    write_run(tmp_path / "uniform", make_history(sampler="uniform", drift=0.0, reward_scale=0.02))
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "plot_sampler_history.py"), str(tmp_path / "mometas"),
         "--baseline", str(tmp_path / "uniform"), "--output_dir", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "mometas sampling distribution" in proc.stdout and "dtd" in proc.stdout
    for name in PLOT_FILENAMES:
        assert_png(out / name)


def test_cli_defaults_and_errors(tmp_path, capsys, make_history):
    cli = load_cli()
    write_run(tmp_path, make_history(n=2, with_val=False))
    assert cli.main([str(tmp_path / "sampler_history.jsonl")]) == 0
    assert (tmp_path / "plots" / "average_weights.png").is_file()
    assert "skipped validation_loss.png" in capsys.readouterr().out

    assert cli.main([str(tmp_path), "--baseline", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --baseline: ") and "nope" in err and "\n" not in err

    with pytest.raises(SystemExit) as exit_:
        cli.main(["-h"])
    assert exit_.value.code == 0
    assert "Figure 2" in capsys.readouterr().out
