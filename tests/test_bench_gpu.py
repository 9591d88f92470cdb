"""bench/bench_gpu.py at tiny size on CPU: both loops run, and the figures it prints add up."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_gpu import step_flops  # noqa: E402


def test_tiny_cpu_run_prints_both_throughputs_and_their_ratio(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--tiny",
                             "--fused_adamw", "--json", str(out)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    mometas = re.search(r"mometas\s*: ([\d,]+) corpus tokens/s, ([\d,]+) encoder tokens/s", text)
    plain = re.search(r"plain MLM : ([\d,]+) tokens/s", text)
    ratio = re.search(r"ratio mometas / plain MLM: ([\d.]+) in encoder tokens/s .* ([\d.]+) in corpus tokens/s", text)
    assert mometas and plain and ratio, text
    figures = json.loads(out.read_text())
    m, p = figures["mometas"], figures["plain_mlm"]
    assert float(ratio.group(1)) == pytest.approx(m["encoder_tokens_per_s"] / p["encoder_tokens_per_s"], rel=1e-2)
    assert int(mometas.group(2).replace(",", "")) == round(m["encoder_tokens_per_s"])
    # CSE encodes each sequence twice and ATD inserts tokens: more encoder tokens than corpus tokens.
    assert m["encoder_tokens_per_s"] > m["corpus_tokens_per_s"] > 0
    assert sum(m["steps_per_objective"].values()) == figures["steps"] == 12
    assert m["meta_test_share"] > 0, "meta-test ran every K steps inside the timed window"
    assert figures["fused_adamw"] is True
    assert m["mfu"] is None and "MFU n/a" in text, "a CPU has no peak unless --peak_tflops gives one"

    # bench/gpu_check.sh's table reads the same file: the MOMETAS loop's encoder tokens/s, the ratio, MFU.
    from gpu_check import bench_figures, format_table

    row = {"check": "bench_gpu.py", "result": "pass", **bench_figures(out), "note": "cpu"}
    assert row["tokens_per_s"] == m["encoder_tokens_per_s"] and row["ratio"] == figures["ratio_encoder_tokens"]
    line = format_table([row]).splitlines()[1].split("  ")
    cells = [cell.strip() for cell in line if cell.strip()]
    assert cells[:5] == ["bench_gpu.py", "pass", mometas.group(2), f"{float(ratio.group(1)):.3f}", "-"], cells


def test_flops_formula_counts_the_encoder_weights():
    config = BertConfig(vocab_size=50, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=96)
    encoder = BertModel(config).encoder
    weights = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    # Without width and heads, a token costs 6 FLOPs per encoder weight (forward + backward).
    assert step_flops(config, n_tokens=1, width=0) == 6 * weights
    # The attention term: per layer, QK^T and AV are 2 x 2 x width x hidden FLOPs forward, x3 with backward.
    assert step_flops(config, 1, 10) - step_flops(config, 1, 0) == 3 * 4 * 10 * 48 * 3
    bert_base = BertConfig()
    assert step_flops(bert_base, 1, 0) == 6 * 84_934_656
