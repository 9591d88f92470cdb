"""utils/check_copies.py: the code run_ner.py and run_multiple_choice.py copy from run_glue.py stays identical."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "utils"))
import check_copies  # noqa: E402

SCRIPTS = ("run_glue.py", "run_ner.py", "run_multiple_choice.py")


def test_the_copies_in_the_repository_match_as_a_command():
    result = subprocess.run([sys.executable, str(ROOT / "utils" / "check_copies.py")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= 80 and "match" in result.stdout
    # The shared checkpoint, output-folder and Hub code is among them, in both scripts.
    for script in SCRIPTS[1:]:
        text = (ROOT / script).read_text()
        for name in ("save_checkpoint", "check_output_dir", "create_hub_repo", "number", "start_upload",
                     "parameters_finite", "check_launch"):
            assert f"# Copied from run_glue.{name}\n" in text, (script, name)


@pytest.fixture
def scripts(tmp_path):
    for name in SCRIPTS:
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def check(root, *flags):
    return check_copies.main(["--root", str(root), *flags])


def test_a_drifted_copy_is_named_with_its_line_and_fixed(scripts, capsys):
    ner = scripts / "run_ner.py"
    text = ner.read_text()
    start = text.index("# Copied from run_glue.save_checkpoint\n")
    drifted = text[:start] + text[start:].replace("accelerator.save_state(tmp)", "accelerator.save_state(final)", 1)
    ner.write_text(drifted)
    assert check(scripts) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = drifted[:start].count("\n") + 2  # the def, under the marker
    assert err == [f"error: run_ner.py:{line}: save_checkpoint is no longer a copy of run_glue.save_checkpoint "
                   "(-    accelerator.save_state(tmp); +    accelerator.save_state(final))"]
    assert check(scripts, "--fix_and_overwrite") == 0
    assert ner.read_text() == text
    assert check(scripts) == 0


def test_a_copy_with_replacements_must_follow_them(scripts, capsys):
    ner = scripts / "run_ner.py"
    text = ner.read_text()
    assert "# Copied from run_glue.load_model with SequenceClassification->TokenClassification, sequence->token" in text
    ner.write_text(text.replace("cannot load it for token classification", "cannot load it for sequence classification"))
    assert check(scripts) == 1
    assert "load_model is no longer a copy of run_glue.load_model" in capsys.readouterr().err


def test_every_shared_name_is_marked_or_explained(scripts, capsys):
    mc = scripts / "run_multiple_choice.py"
    mc.write_text(mc.read_text().replace("# Copied from run_glue.one_line\n", "", 1)
                  .replace("# Not a copy of run_glue.load_model: ", "# Not a copy of run_glue.load_modle: ", 1))
    assert check(scripts) == 1
    err = capsys.readouterr().err
    assert "run_multiple_choice.py" in err and "error: run_multiple_choice.py:" in err
    assert "one_line shares its name with run_glue.one_line: mark it '# Copied from run_glue.one_line'" in err
    assert "run_glue.py has no top-level load_modle" in err
    assert "load_model shares its name with run_glue.load_model" in err
