"""run_mometas_pretraining.py facing a hostile user: every bad input is one line `error: ...` and exit code 2.

Also --help (defaults, required flags, a help line for every flag), the --mlm_probability alias, and
docs/pretraining.md against the parser and the paper's Table 6.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mometas_utils.paper import PRETRAINING_HPARAMS
from test_pretraining import load_script, tree_digest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_mometas_pretraining.py"
QUICK = ["--max_seq_length", "32", "--per_device_train_batch_size", "4", "--objectives", "mlm,dtd",
         "--sampler", "uniform", "--meta_length", "2"]


@pytest.fixture(scope="module")
def inputs(tiny_bert, english_corpus, tmp_path_factory):
    """A finished run with checkpoints, and the files a hostile user would pass."""
    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--model_name_or_path", tiny_bert, "--train_file",
                             english_corpus, *QUICK, "--max_train_steps", "4", "--checkpointing_steps", "2",
                             "--output_dir", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = root / "files"
    files.mkdir()
    (files / "empty.txt").write_text("\n  \n")
    (files / "latin1.txt").write_bytes("Un café au lait, s'il vous plaît, et une crème brûlée.\n".encode("latin-1") * 40)
    (files / "no_text.csv").write_text("title,body\nA title,Some body text that is long enough\nB,More text\n")
    (files / "corpus.parquet").write_bytes(b"PAR1 not really")
    (files / "empty_folder").mkdir()
    config_only = files / "config_only"
    config_only.mkdir()
    shutil.copy(Path(tiny_bert) / "config.json", config_only / "config.json")
    small_vocab = files / "small_vocab"
    small_vocab.mkdir()
    config = json.loads((config_only / "config.json").read_text())
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    gpt2 = files / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8}))
    return SimpleNamespace(tiny=tiny_bert, corpus=english_corpus, run=run, files=files)


def damaged_run(ctx, tmp_path, damage=None):
    run = Path(shutil.copytree(ctx.run, tmp_path / "run"))
    step = run / "step_4"
    if damage == "weights":
        os.truncate(step / "model.safetensors", (step / "model.safetensors").stat().st_size // 2)
    elif damage == "marker":
        (step / "mometas_checkpoint.json").write_text('{"step": 4, "epo')
    elif damage == "random_states":
        os.truncate(step / "random_states_0.pkl", 10)
    elif damage == "no_checkpoints":
        for path in run.glob("step_*"):
            shutil.rmtree(path)
    return run


def base(ctx, out, *extra, corpus=True):
    argv = ["--model_name_or_path", ctx.tiny, *QUICK, "--max_train_steps", "2", "--output_dir", out]
    return [*argv, *(["--train_file", ctx.corpus] if corpus else []), *extra]


def resume(ctx, tmp_path, damage, *extra):
    run = damaged_run(ctx, tmp_path, damage)
    return base(ctx, run, "--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest",
                *extra)


# (id, argv from (ctx, out, tmp_path), fragments the one error line must hold)
CASES = [
    # numbers
    ("lr_nan", lambda c, o, t: base(c, o, "--learning_rate", "nan"), ["--learning_rate must be a finite number"]),
    ("lr_inf", lambda c, o, t: base(c, o, "--learning_rate", "inf"), ["--learning_rate must be a finite number"]),
    ("lr_negative", lambda c, o, t: base(c, o, "--learning_rate=-1e-4"), ["--learning_rate must be > 0"]),
    ("lr_zero", lambda c, o, t: base(c, o, "--learning_rate", "0"), ["--learning_rate must be > 0"]),
    ("lr_text", lambda c, o, t: base(c, o, "--learning_rate", "fast"), ["--learning_rate", "invalid float"]),
    ("wd_nan", lambda c, o, t: base(c, o, "--weight_decay", "nan"), ["--weight_decay must be a finite number"]),
    ("wd_negative", lambda c, o, t: base(c, o, "--weight_decay", "-0.1"), ["--weight_decay must be >= 0"]),
    ("clip_nan", lambda c, o, t: base(c, o, "--max_grad_norm", "nan"), ["--max_grad_norm must be a finite"]),
    ("clip_negative", lambda c, o, t: base(c, o, "--max_grad_norm", "-1"), ["--max_grad_norm must be >= 0"]),
    ("warmup_ratio_big", lambda c, o, t: base(c, o, "--warmup_ratio", "1.5"), ["--warmup_ratio must be in [0, 1]"]),
    ("warmup_ratio_inf", lambda c, o, t: base(c, o, "--warmup_ratio=-inf"), ["--warmup_ratio must be a finite"]),
    ("mlm_probability_alias", lambda c, o, t: base(c, o, "--mlm_probability", "1.5"),
     ["--noise_probability must be in [0, 1]"]),
    ("noise_nan", lambda c, o, t: base(c, o, "--noise_probability", "nan"), ["--noise_probability must be a finite"]),
    ("val_pct_zero", lambda c, o, t: base(c, o, "--validation_split_percentage", "0"),
     ["--validation_split_percentage must be in (0, 100)"]),
    ("val_pct_all", lambda c, o, t: base(c, o, "--validation_split_percentage", "100"),
     ["--validation_split_percentage"]),
    ("meta_step_nan", lambda c, o, t: base(c, o, "--meta_step_size", "nan"), ["--meta_step_size must be a finite"]),
    ("meta_step_negative", lambda c, o, t: base(c, o, "--sampler", "mometas", "--meta_step_size", "-0.1"),
     ["--meta_step_size"]),
    ("entropy_inf", lambda c, o, t: base(c, o, "--entropy_lambda", "inf"), ["--entropy_lambda must be a finite"]),
    ("min_probability_too_big", lambda c, o, t: base(c, o, "--sampler", "mometas", "--min_probability", "0.5"),
     ["--min_probability"]),
    ("reward_floor_nan", lambda c, o, t: base(c, o, "--reward_floor", "nan"), ["--reward_floor must be a finite"]),
    ("reward_floor_positive", lambda c, o, t: base(c, o, "--reward_floor", "0.5"), ["--reward_floor"]),
    ("dead_zone_negative", lambda c, o, t: base(c, o, "--reward_dead_zone", "-1"), ["--reward_dead_zone"]),
    ("baseline_decay_one", lambda c, o, t: base(c, o, "--sampler", "mometas", "--reward_baseline_decay", "1"),
     ["--reward_baseline_decay"]),
    ("batch_zero", lambda c, o, t: base(c, o, "--per_device_train_batch_size", "0"),
     ["--per_device_train_batch_size must be at least 1"]),
    ("eval_batch_zero", lambda c, o, t: base(c, o, "--per_device_eval_batch_size", "0"),
     ["--per_device_eval_batch_size"]),
    ("accumulation_zero", lambda c, o, t: base(c, o, "--gradient_accumulation_steps", "0"),
     ["--gradient_accumulation_steps must be at least 1"]),
    ("steps_zero", lambda c, o, t: base(c, o, "--max_train_steps", "0"), ["--max_train_steps must be at least 1"]),
    ("steps_negative", lambda c, o, t: base(c, o, "--max_train_steps", "-5"), ["--max_train_steps"]),
    ("steps_float", lambda c, o, t: base(c, o, "--max_train_steps", "2.5"), ["--max_train_steps", "invalid int"]),
    ("epochs_zero", lambda c, o, t: base(c, o, "--num_train_epochs", "0"), ["--num_train_epochs"]),
    ("warmup_steps_negative", lambda c, o, t: base(c, o, "--num_warmup_steps", "-1"), ["--num_warmup_steps"]),
    ("meta_length_zero", lambda c, o, t: base(c, o, "--meta_length", "0"), ["--meta_length"]),
    ("meta_length_below_objectives", lambda c, o, t: base(c, o, "--sampler", "mometas", "--meta_length", "1"),
     ["--meta_length", "number of objectives"]),
    ("checkpointing_text", lambda c, o, t: base(c, o, "--checkpointing_steps", "epoch"), ["--checkpointing_steps"]),
    ("checkpointing_zero", lambda c, o, t: base(c, o, "--checkpointing_steps", "0"), ["--checkpointing_steps"]),
    ("total_limit_zero", lambda c, o, t: base(c, o, "--checkpoints_total_limit", "0"),
     ["--checkpoints_total_limit must be at least 1"]),
    ("skip_negative", lambda c, o, t: base(c, o, "--skip_nonfinite_steps", "-1"), ["--skip_nonfinite_steps"]),
    ("seed_negative", lambda c, o, t: base(c, o, "--seed", "-1"), ["--seed must be at least 0"]),
    ("seed_huge", lambda c, o, t: base(c, o, "--seed", str(2**40)), ["--seed must be below 2**32"]),
    ("seq_len_tiny", lambda c, o, t: base(c, o, "--max_seq_length", "4"), ["--max_seq_length must be at least 8"]),
    ("preprocessing_workers_zero", lambda c, o, t: base(c, o, "--preprocessing_num_workers", "0"),
     ["--preprocessing_num_workers"]),
    # flags
    ("scheduler_unknown", lambda c, o, t: base(c, o, "--lr_scheduler_type", "warp"), ["--lr_scheduler_type"]),
    ("flag_with_hyphens", lambda c, o, t: base(c, o, "--learning-rate", "1e-4"), ["unrecognized arguments"]),
    ("no_output_dir", lambda c, o, t: ["--model_name_or_path", c.tiny, "--train_file", c.corpus],
     ["--output_dir"]),
    ("no_model", lambda c, o, t: ["--train_file", c.corpus, "--output_dir", o], ["--model_name_or_path"]),
    ("no_corpus", lambda c, o, t: base(c, o, corpus=False), ["no corpus given", "--train_file"]),
    ("file_and_dataset", lambda c, o, t: base(c, o, "--dataset_name", "allenai/c4"), ["--dataset_name"]),
    ("objective_unknown", lambda c, o, t: base(c, o, "--objectives", "mlm,nsp"), ["--objectives", "nsp"]),
    ("objectives_empty", lambda c, o, t: base(c, o, "--objectives", " , "), ["--objectives"]),
    ("objective_twice", lambda c, o, t: base(c, o, "--objectives", "mlm,mlm"), ["--objectives", "twice"]),
    ("sampler_unknown", lambda c, o, t: base(c, o, "--sampler", "greedy"), ["--sampler"]),
    ("fixed_without_weights", lambda c, o, t: base(c, o, "--sampler", "fixed"), ["--sampler_weights"]),
    ("weights_not_numbers", lambda c, o, t: base(c, o, "--sampler", "fixed", "--sampler_weights", "a,b"),
     ["--sampler_weights"]),
    ("weights_negative", lambda c, o, t: base(c, o, "--sampler", "fixed", "--sampler_weights", "mlm=-1,dtd=1"),
     ["--sampler_weights", ">= 0"]),
    ("weights_without_fixed", lambda c, o, t: base(c, o, "--sampler_weights", "1,1"),
     ["--sampler_weights", "fixed sampler"]),
    ("reward_objective_unknown", lambda c, o, t: base(c, o, "--reward_objectives", "nsp"), ["--reward_objectives"]),
    ("tracker_unknown", lambda c, o, t: base(c, o, "--with_tracking", "--report_to", "myspace"), ["--report_to"]),
    ("tracker_not_installed", lambda c, o, t: base(c, o, "--with_tracking", "--report_to", "wandb"),
     ["--report_to wandb", "not every tracker is installed"]),
    ("streaming_without_steps", lambda c, o, t: ["--model_name_or_path", c.tiny, "--train_file", c.corpus,
                                                 "--output_dir", o, "--streaming"], ["--streaming", "--max_train_steps"]),
    ("entity_column_missing", lambda c, o, t: base(c, o, "--objectives", "mlm,emlm", "--entity_tagger", "column"),
     ["--entity_column"]),
    ("overwrite_and_resume_latest", lambda c, o, t: base(c, o, "--overwrite_output_dir", "--resume_from_checkpoint",
                                                         "latest"), ["--overwrite_output_dir", "--resume_from_checkpoint"]),
    ("every_save_without_checkpoints", lambda c, o, t: base(c, o, "--push_to_hub", "--hub_strategy", "every_save"),
     ["--hub_strategy every_save", "--checkpointing_steps"]),
    ("preprocess_without_folder", lambda c, o, t: base(c, o, "--preprocess_only"),
     ["--preprocess_only needs --processed_dataset"]),
    ("processed_dataset_and_corpus", lambda c, o, t: base(c, o, "--processed_dataset", str(t / "seqs")),
     ["--processed_dataset replaces the corpus", "--train_file"]),
    ("processed_dataset_missing", lambda c, o, t: base(c, o, "--processed_dataset", str(t / "seqs"), corpus=False),
     ["--processed_dataset", "does not exist"]),
    ("dataloader_workers_negative", lambda c, o, t: base(c, o, "--dataloader_num_workers", "-1"),
     ["--dataloader_num_workers must be at least 0"]),
    # the Hub, before any training
    ("hub_bad_repo_id", lambda c, o, t: base(c, o, "--push_to_hub", "--hub_model_id", "my org/my model"),
     ["--hub_model_id", "not a valid repo id"]),
    ("hub_offline", lambda c, o, t: base(c, o, "--push_to_hub", "--hub_model_id", "org/mometas-test"),
     ["--hub_model_id: cannot reach the Hub", "org/mometas-test"]),
    # the model
    ("model_missing", lambda c, o, t: base(c, o, "--model_name_or_path", str(t / "no_model")),
     ["--model_name_or_path", "does not exist"]),
    ("model_is_a_file", lambda c, o, t: base(c, o, "--model_name_or_path", c.corpus), ["is a file"]),
    ("model_folder_without_config", lambda c, o, t: base(c, o, "--model_name_or_path", str(c.files / "empty_folder")),
     ["folder without config.json"]),
    ("model_bad_hub_id", lambda c, o, t: base(c, o, "--model_name_or_path", "not a/valid//id"),
     ["is not a Hub model id"]),
    ("model_hub_offline", lambda c, o, t: base(c, o, "--model_name_or_path", "mometas-test/no-such-model"),
     ["--model_name_or_path mometas-test/no-such-model could not be loaded"]),
    ("model_without_weights", lambda c, o, t: base(c, o, "--model_name_or_path", str(c.files / "config_only"),
                                                   "--tokenizer_name", c.tiny), ["holds no usable weights"]),
    ("model_without_tokenizer", lambda c, o, t: base(c, o, "--model_name_or_path", str(c.files / "config_only")),
     ["--model_name_or_path", "holds no usable tokenizer"]),
    ("tokenizer_larger_than_embeddings", lambda c, o, t: base(c, o, "--config_name", str(c.files / "small_vocab")),
     ["--model_name_or_path", "more than the model's 100 embeddings"]),
    ("tokenizer_folder_without_tokenizer", lambda c, o, t: base(c, o, "--tokenizer_name", str(c.files / "empty_folder")),
     ["--tokenizer_name", "holds no usable tokenizer"]),
    ("tokenizer_missing", lambda c, o, t: base(c, o, "--tokenizer_name", str(t / "no_tokenizer")), ["--tokenizer_name"]),
    ("model_not_bert", lambda c, o, t: base(c, o, "--config_name", str(c.files / "gpt2")),
     ["--config_name", "gpt2", "BERT"]),
    ("config_alone", lambda c, o, t: ["--config_name", c.tiny, "--train_file", c.corpus, "--output_dir", o],
     ["--tokenizer_name is required"]),
    ("longer_than_positions", lambda c, o, t: base(c, o, "--max_seq_length", "512"),
     ["--max_seq_length 512 exceeds the model's 128 positions"]),
    # the corpus
    ("corpus_missing", lambda c, o, t: base(c, o, "--train_file", str(t / "nope.txt")), ["--train_file", "nope.txt"]),
    ("corpus_empty", lambda c, o, t: base(c, o, "--train_file", str(c.files / "empty.txt")), ["empty.txt"]),
    ("corpus_dev_null", lambda c, o, t: base(c, o, "--train_file", "/dev/null"), ["/dev/null"]),
    ("corpus_not_utf8", lambda c, o, t: base(c, o, "--train_file", str(c.files / "latin1.txt")), ["latin1.txt"]),
    ("corpus_folder", lambda c, o, t: base(c, o, "--train_file", str(c.files)), ["--train_file", "directory"]),
    ("corpus_unknown_format", lambda c, o, t: base(c, o, "--train_file", str(c.files / "corpus.parquet")),
     ["corpus.parquet"]),
    ("corpus_without_text_column", lambda c, o, t: base(c, o, "--train_file", str(c.files / "no_text.csv")),
     ["no_text.csv", "--text_column"]),
    ("validation_missing", lambda c, o, t: base(c, o, "--validation_file", str(t / "val.txt")), ["val.txt"]),
    # the output folder
    ("output_is_a_file", lambda c, o, t: base(c, c.corpus), ["--output_dir", "is a file"]),
    ("output_under_a_file", lambda c, o, t: base(c, Path(c.corpus) / "out"), ["--output_dir: cannot write in"]),
    ("output_unwritable", lambda c, o, t: base(c, "/proc/mometas_out"), ["--output_dir: cannot write in"]),
    ("output_holds_a_run", lambda c, o, t: base(c, damaged_run(c, t, "no_checkpoints")),
     ["holds the outputs of another run", "--resume_from_checkpoint", "--overwrite_output_dir"]),
    ("output_holds_checkpoints", lambda c, o, t: base(c, damaged_run(c, t)),
     ["holds the outputs of another run", "step_2", "--resume_from_checkpoint", "--overwrite_output_dir"]),
    # resume
    ("resume_missing", lambda c, o, t: base(c, o, "--resume_from_checkpoint", str(t / "step_9")),
     ["--resume_from_checkpoint", "step_9 is not a folder"]),
    ("resume_latest_without_checkpoints", lambda c, o, t: base(c, o, "--resume_from_checkpoint", "latest"),
     ["--resume_from_checkpoint: 'latest' found no complete checkpoint"]),
    ("resume_not_a_checkpoint", lambda c, o, t: base(c, o, "--resume_from_checkpoint", c.tiny),
     ["not a complete checkpoint"]),
    ("resume_truncated_weights", lambda c, o, t: resume(c, t, "weights"), ["model.safetensors holds", "truncated"]),
    ("resume_corrupted_marker", lambda c, o, t: resume(c, t, "marker"), ["mometas_checkpoint.json is corrupted"]),
    ("resume_truncated_rng", lambda c, o, t: resume(c, t, "random_states"), ["random_states_0.pkl"]),
    ("resume_other_seed", lambda c, o, t: resume(c, t, None, "--seed", "7"), ["seed: 42 -> 7", "--allow_config_change"]),
    ("resume_other_batches", lambda c, o, t: resume(c, t, None, "--gradient_accumulation_steps", "2"),
     ["gradient_accumulation_steps: 1 -> 2"]),
    ("resume_other_corpus", lambda c, o, t: resume(c, t, None, "--train_file", str(c.files / "latin1.txt")),
     ["train_file:"]),
    ("resume_other_objectives", lambda c, o, t: resume(c, t, None, "--objectives", "mlm,atd"),
     ["--objectives mlm,dtd, not mlm,atd"]),
    ("resume_other_sampler", lambda c, o, t: resume(c, t, None, "--sampler", "loss"), ["--sampler uniform, not loss"]),
    ("overwrite_own_checkpoint", lambda c, o, t: base(c, damaged_run(c, t), "--overwrite_output_dir",
                                                      "--resume_from_checkpoint", str(t / "run" / "step_2")),
     ["--overwrite_output_dir would delete the checkpoint"]),
    ("resume_foreign_checkpoint_into_a_run", lambda c, o, t: base(c, damaged_run(c, t), "--resume_from_checkpoint",
                                                                  str(c.run / "step_2")),
     ["holds the outputs of another run"]),
]


@pytest.mark.parametrize("name, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(name, argv, fragments, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(a) for a in argv(inputs, out, tmp_path)]
    watched = [inputs.run] + ([tmp_path / "run"] if (tmp_path / "run").exists() else [])
    before = {p: tree_digest(p) for p in watched}
    with pytest.raises(SystemExit) as exit_:
        load_script().main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2, err[-2000:]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err[-2000:]
    assert "Traceback" not in err and "sentencepiece" not in err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert {p: tree_digest(p) for p in before} == before, "a refused run changed nothing"


# ----------------------------------------------------------------------------- --help and docs


@pytest.fixture(scope="module")
def parser_actions():
    return [a for a in load_script().build_parser()._actions if a.option_strings and a.dest != "help"]


def test_help_shows_defaults_required_flags_and_a_line_for_every_flag():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert result.returncode == 0
    usage = result.stdout.split("\n\n")[0]
    assert re.search(r"usage: \S+ \[-h\] --model_name_or_path MODEL_NAME_OR_PATH", usage)
    assert "--output_dir OUTPUT_DIR" in usage and "[--output_dir" not in usage
    assert "(default: 5e-05)" in result.stdout and "(default: 0.06)" in result.stdout


def test_every_flag_has_help(parser_actions):
    missing = [a.option_strings[0] for a in parser_actions if not a.help]
    assert missing == []
    assert len(parser_actions) > 60


def test_mlm_probability_is_noise_probability():
    args = load_script().parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--mlm_probability", "0.3"])
    assert args.noise_probability == 0.3


def test_docs_list_every_flag_with_the_papers_defaults(parser_actions):
    docs = (ROOT / "docs" / "pretraining.md").read_text()
    undocumented = [s for a in parser_actions for s in a.option_strings if f"`{s}" not in docs]
    assert undocumented == []
    for name, value in PRETRAINING_HPARAMS.items():
        assert re.search(rf"\| {name} \| {value!s} \|", docs), name
    defaults = {a.dest: a.default for a in parser_actions}
    for flag in ("learning_rate", "weight_decay", "max_seq_length", "warmup_ratio", "max_grad_norm"):
        assert defaults[flag] == PRETRAINING_HPARAMS[flag], flag
