"""bench/gpu_check.sh, the GPU checks in one command, as far as a CPU can check it.

No GPU here: the script must stop with one line, plan every check for 1 and 2 GPUs, rehearse
the fp16 skip on CPU through the same code (a CPU GradScaler), and judge runs by what they wrote.
The table's bench row is checked on a real CPU run of bench_gpu.py in tests/test_bench_gpu.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def run(*args, timeout=600, **env):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_without_a_gpu_it_stops_with_one_line_and_runs_nothing(tmp_path):
    result = run("--output_dir", tmp_path / "out", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: no CUDA GPU is visible (torch.cuda.device_count() is 0): run bench/gpu_check.sh on a GPU machine, "
        "or rehearse on CPU with --cpu"]
    assert not (tmp_path / "out").exists()
    bad = run("--only", "fp32")
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "error: argument --only: unknown check(s) fp32; choose from fp16, bf16, gradient, ddp, bench (see --help)"]


@pytest.mark.parametrize("gpus", [1, 2])
def test_dry_run_plans_every_check_for_the_gpus_it_has(gpus, tmp_path):
    result = run("--dry_run", "--gpus", gpus, "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line[2:].split(":")[0]: line for line in result.stdout.splitlines() if line.startswith("- ")}
    assert list(lines) == ["pre-training fp16, 5 objectives, NaN step skipped",
                           "pre-training bf16, 5 objectives, NaN step skipped", "Gb (--sampler gradient), fp16",
                           "DDP on 2 GPUs, bf16, --cse_gather", "bench_gpu.py"]
    for name, precision in (("pre-training fp16", "fp16"), ("pre-training bf16", "bf16")):
        line = next(v for k, v in lines.items() if k.startswith(name))
        assert f"--mixed_precision {precision}" in line and "--skip_nonfinite_steps 1" in line
        assert "--nan_at_steps 7" in line and "--objectives mlm,cse,atd,dtd,emlm" in line and "--cpu" not in line
    gb = lines["Gb (--sampler gradient), fp16"]
    assert "--mixed_precision fp16" in gb and "--sampler gradient" in gb
    ddp = lines["DDP on 2 GPUs, bf16, --cse_gather"]
    if gpus == 1:
        assert ddp.endswith("skip (1 GPU visible; needs 2)")
    else:
        assert "--multi_gpu --main_process_port" in ddp and "--num_processes 2" in ddp and "--cse_gather" in ddp
    assert "bench_gpu.py --json" in lines["bench_gpu.py"] and "--device cpu" not in lines["bench_gpu.py"]


def test_cpu_rehearsal_skips_the_planted_nan_under_a_cpu_grad_scaler(tmp_path):
    result = run("--cpu", "--only", "fp16", "--output_dir", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "GradScaler stands in" in (tmp_path / "pretrain_fp16.log").read_text()
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [row["result"] for row in rows] == ["pass"] and "step 3 skipped" in rows[0]["note"]
    table = result.stdout[result.stdout.index("check "):].splitlines()
    assert table[0].split() == ["check", "result", "tokens/s", "vs", "MLM", "loop", "MFU", "note"]
    assert table[1].startswith("pre-training fp16, 5 objectives, NaN step skipped  pass")
    assert f"{rows[0]['tokens_per_s']:,.0f}" in table[1] and "14 of 15 steps trained; step 3 skipped" in table[1]
    assert table[-1].startswith("1 passed, 0 failed, 0 skipped")


def history(folder, rows, model=True):
    folder.mkdir()
    if model:
        (folder / "model.safetensors").write_bytes(b"x")
    (folder / "sampler_history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def row(step, counts, losses=None, probabilities=None, **extra):
    names = ["mlm", "cse"]
    return {"step": step, "objectives": names, "counts": dict(zip(names, counts)),
            "rollout": ["mlm"] * sum(counts) + ["cse"] * extra.pop("skipped", 0), "val_loss": losses,
            "probabilities": probabilities or {"mlm": 0.5, "cse": 0.5}, "tokens_seen": {"mlm": 100, "cse": 100},
            "elapsed_seconds": 4.0, **extra}


def test_a_run_is_judged_by_what_it_wrote(tmp_path):
    good = history(tmp_path / "good", [row(2, [1, 1]), row(4, [1, 0], skipped=1)])
    ok, note, speed = gpu_check.verify_pretraining(good, {"steps": 4, "nan_step": 3})
    assert ok and note == "3 of 4 steps trained; step 3 skipped" and speed == 50.0
    assert gpu_check.verify_pretraining(good, {"steps": 6})[1] == "stopped at step 4 of 6"
    no_skip = history(tmp_path / "no_skip", [row(2, [1, 1]), row(4, [1, 1])])
    assert not gpu_check.verify_pretraining(no_skip, {"steps": 4, "nan_step": 3})[0]
    uniform = gpu_check.verify_pretraining(no_skip, {"steps": 4, "gradient": True})
    assert uniform[:2] == (False, "Gb's distribution stayed uniform (no gradient norm reached it)")
    nan = history(tmp_path / "nan", [row(2, [1, 1], losses={"mlm": None, "cse": 1.0})])
    assert "a non-finite loss in the history" in gpu_check.verify_pretraining(nan, {"steps": 2})[1]
    one_objective = history(tmp_path / "one", [row(2, [2, 0])])
    assert "never trained ['cse']" in gpu_check.verify_pretraining(one_objective, {"steps": 2})[1]
    apart = history(tmp_path / "apart", [row(2, [1, 1], num_processes=2, process_rollouts=[["mlm", "cse"], ["cse", "mlm"]])])
    assert gpu_check.verify_pretraining(apart, {"steps": 2, "processes": 2})[1] == "the processes drew different objectives"
    missing = history(tmp_path / "missing", [row(2, [1, 1])], model=False)
    assert gpu_check.verify_pretraining(missing, {"steps": 2}) == (False, "no model or no history was written", None)
