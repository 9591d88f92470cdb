"""Copy one script and change it: each script runs alone in an empty folder.

Each script is copied by itself into an empty temporary folder and run there (cwd = that
folder) with the project's root neither on PYTHONPATH nor on sys.path; a stand-in
``mometas_utils`` that refuses to be imported comes first on the path, so the test also holds
where the library is pip-installed. Run with ``pytest -s`` to see what each run printed.
To add a script, add a CASES entry: a function that writes tiny data into a folder and returns
the argv of a tiny run (without --output_dir).
"""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest

from finetune_helpers import REPO_ROOT, make_tiny_bert, write_conll, write_dream_json, write_sst2_tsv

ALLOWED = {"accelerate", "datasets", "huggingface_hub", "numpy", "scipy", "seqeval", "sklearn", "torch", "tqdm",
           "transformers", *sys.stdlib_module_names}  # fmt: skip


def glue_case(folder, model):
    train = write_sst2_tsv(folder / "train.tsv", 8)
    return ["--model_name_or_path", model, "--task_name", "sst2", "--train_file", train, "--validation_file", train,
            "--max_length", "16", "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--checkpointing_steps", "1"]  # fmt: skip


def ner_case(folder, model):
    train = write_conll(folder / "train.txt", 6)
    return ["--model_name_or_path", model, "--train_file", train, "--validation_file", train, "--max_length", "16",
            "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--checkpointing_steps", "1"]  # fmt: skip


def multiple_choice_case(folder, model):
    train = write_dream_json(folder / "train.json", 6)
    return ["--model_name_or_path", model, "--train_file", train, "--validation_file", train, "--max_length", "24",
            "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--checkpointing_steps", "1"]  # fmt: skip


CASES = {"run_glue.py": glue_case, "run_ner.py": ner_case, "run_multiple_choice.py": multiple_choice_case}


@pytest.mark.parametrize("script", list(CASES))
def test_imports_only_installed_packages(script):
    tree = ast.parse((REPO_ROOT / script).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{script}: relative import"
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED, imported - ALLOWED


# The entries of the interpreter's sys.path that would import from the repository: the repository itself
# or a folder inside it. A virtual environment may live inside the clone (``python -m venv .venv``); its
# own folders (under sys.prefix) hold installed packages, not the repository's files, and are allowed.
PROBE = """
import json, os, sys
print(json.dumps({"path": [os.path.realpath(p or ".") for p in sys.path], "prefix": os.path.realpath(sys.prefix)}))
"""


def repository_entries_on_path(cwd, env):
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    root, prefix = os.path.realpath(REPO_ROOT), found["prefix"]

    def inside(path, folder):
        return path == folder or path.startswith(folder + os.sep)

    return [p for p in found["path"] if inside(p, root) and not inside(p, prefix)]


def test_the_probe_sees_the_repository_on_the_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    assert not repository_entries_on_path(tmp_path, env)
    assert repository_entries_on_path(tmp_path, {**env, "PYTHONPATH": str(REPO_ROOT)}) == [os.path.realpath(REPO_ROOT)]
    assert repository_entries_on_path(tmp_path, {**env, "PYTHONPATH": str(REPO_ROOT / "examples")})


@pytest.mark.parametrize("script", list(CASES))
def test_a_copied_script_runs_alone(script, tmp_path):
    alone, data, blocker = tmp_path / "alone", tmp_path / "data", tmp_path / "blocker" / "mometas_utils"
    for folder in (alone, data, blocker):
        folder.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the copied script imported mometas_utils')\n")
    shutil.copy(REPO_ROOT / script, alone / script)
    argv = CASES[script](data, make_tiny_bert(data / "model"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(blocker.parent), OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")  # fmt: skip

    def run(*args):
        return subprocess.run([sys.executable, script, *map(str, args)], cwd=alone, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    assert not repository_entries_on_path(alone, env)
    help_ = run("--help")
    assert help_.returncode == 0 and "--model_name_or_path MODEL_NAME_OR_PATH" in help_.stdout and "(default:" in help_.stdout
    proc = run(*argv, "--output_dir", "out")
    report = [f"$ cd {alone} && python {script} ... --output_dir out   (only {script} in {alone.name}/; exit {proc.returncode})"]
    report += [line for line in proc.stderr.splitlines() if " - __main__ - " in line][-4:]
    report += [f"{alone.name}/ now holds: {', '.join(sorted(p.name for p in alone.iterdir()))}",
               f"out/ holds: {', '.join(sorted(p.name for p in (alone / 'out').iterdir()))}" if (alone / "out").is_dir() else "no out/"]  # fmt: skip
    print("\n" + "\n".join(report))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {"config.json", "model.safetensors", "all_results.json", "README.md", "step_1"} <= {p.name for p in (alone / "out").iterdir()}
    assert sorted(p.name for p in alone.iterdir()) == ["out", script]


@pytest.mark.parametrize("script", list(CASES))
def test_every_flag_has_a_help_line(script):
    calls = [node for node in ast.walk(ast.parse((REPO_ROOT / script).read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"]  # fmt: skip
    assert len(calls) > 30
    missing = [c.args[0].value for c in calls if not any(k.arg == "help" and k.value for k in c.keywords)]
    assert not missing, missing
