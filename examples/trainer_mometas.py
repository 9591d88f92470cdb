#!/usr/bin/env python
"""MOMETAS in a Hugging Face Trainer: continual pre-training of a BERT on several objectives,
one objective per optimizer step drawn by a sampler (mometas_utils.MometasTrainer).

    python examples/trainer_mometas.py --model_name_or_path bert-base-uncased --train_file corpus.txt \\
        --objectives mlm,cse,atd,dtd --sampler mometas --meta_length 100 \\
        --max_steps 10000 --save_steps 1000 --output_dir out/trainer-mometas

Every TrainingArguments flag works (--per_device_train_batch_size, --gradient_accumulation_steps,
--learning_rate, --save_steps, --report_to tensorboard, ...); --per_device_eval_batch_size is the
meta-test batch. The data, objective, sampler and reward flags are those of run_mometas_pretraining.py
(--dataset_name, --streaming, --paper_reward, --skip_nonfinite_steps, ...), as are its refusals and
its end on a NaN (exit code 1, no model). The folder gets the model, sampler_history.jsonl (the
script's format), its plots, a model card and the Trainer's checkpoint-N folders, which
--resume_from_checkpoint PATH|latest continues exactly.
"""

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

from mometas_utils import (
    OBJECTIVES,
    MometasConfig,
    MometasForPreTraining,
    MometasInputError,
    MometasTrainer,
    PadCollator,
    build_objectives,
    build_sampler,
    check_entity_tagger,
    load_raw_corpus,
    objective_heads,
    parse_objectives,
    read_history,
    summarize_distribution,
)
from mometas_utils.card import build_model_card, save_model_card
from mometas_utils.data import iter_rows
from mometas_utils.entities import ENTITY_TAGGERS
from mometas_utils.head_warmup import lacking_heads
from mometas_utils.nonfinite import NONFINITE_EXIT_CODE, NonFiniteError, failure_message
from mometas_utils.paper import PRETRAINING_HPARAMS, SAMPLER_DEFAULTS, apply_paper_reward
from mometas_utils.preprocess import SequenceBuilder, StreamingSequences, materialise, reread, sequence_block


@dataclass
class MometasArguments:
    """The data, objective and sampler flags of run_mometas_pretraining.py, under the same names and defaults.

    The script's training and output flags are TrainingArguments' here (--max_steps, --save_steps, ...)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "BERT checkpoint to continue pre-training."})
    config_name: str | None = field(default=None, metadata={"help": "A BERT config to train from scratch instead."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to use instead of the model's."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the Hub for config and tokenizer."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (or a local dataset folder); "
                                                            "one of --dataset_name or --train_file is required."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Corpus: .txt (a document per line), .json(l), .csv."})
    validation_file: str | None = field(default=None, metadata={"help": "Held-out text for meta-test."})
    validation_split_percentage: float = field(default=5, metadata={"help": "Share of documents held out for meta-test."})
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text (default: 'text')."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of loading it (needs "
                                                     "--max_steps); each process tokenises the stream as it trains."})
    max_seq_length: int = field(default=PRETRAINING_HPARAMS["max_seq_length"], metadata={"help": "Tokens per sequence."})
    line_by_line: bool = field(default=False, metadata={"help": "One document per sequence instead of packing."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every batch to --max_seq_length."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes that tag, tokenise and pack."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets/transformers cache folder."})

    objectives: str = field(default="mlm,cse,atd,dtd,emlm", metadata={"help": f"Comma-separated, from {sorted(OBJECTIVES)}."})
    sampler: str = field(default="mometas", metadata={"help": "uniform, gradient, loss, mometas, fixed, exp3."})
    meta_length: int = field(default=SAMPLER_DEFAULTS["meta_length"], metadata={"help": "K: steps between meta-tests."})
    meta_step_size: float = field(default=SAMPLER_DEFAULTS["meta_step_size"], metadata={"help": "β of the REINFORCE step."})
    entropy_lambda: float = field(default=SAMPLER_DEFAULTS["entropy_lambda"], metadata={"help": "λ of the entropy bonus."})
    entropy_lambda_schedule: Literal["constant", "learning_rate"] = field(default="constant", metadata={
        "help": "constant: λ at every update (the paper); learning_rate: λ × the learning rate over its peak so far."})
    reward: Literal["relative", "overall", "hard"] = field(default="relative", metadata={
        "help": "R(τ): relative loss drops (Eq. 3), drop of the summed loss, or ±1 per objective."})
    reward_floor: float | None = field(default=-1.0, metadata={
        "help": "Lower bound of each relative reward term (authors' code); 'none': the literal Eq. 3."})
    reward_dead_zone: float = field(default=1e-3, metadata={"help": "A |b_i - a_i| at most this counts as 0."})
    reward_baseline: Literal["none", "ema"] = field(default="ema", metadata={"help": "REINFORCE baseline."})
    reward_baseline_decay: float = field(default=0.9, metadata={"help": "Decay of the reward moving averages."})
    reward_normalize: bool = field(default=True, metadata={"help": "Divide the centred reward by its running std."})
    reward_objectives: str | None = field(default=None, metadata={"help": "Objectives whose losses make the reward."})
    min_probability: float = field(default=0.0, metadata={"help": "Least probability of every objective (paper: 0)."})
    meta_eval_fixed: bool = field(default=True, metadata={"help": "Meta-test on the same batches every time."})
    paper_reward: bool = field(default=False, metadata={
        "help": "The paper's Eqs. 2-4 literally: --reward_floor none --reward_dead_zone 0 --reward_baseline none "
        "--no_reward_normalize --min_probability 0 --no_meta_eval_fixed. Explicit flags still win."})
    sampler_weights: str | None = field(default=None, metadata={"help": "For --sampler fixed: 'mlm=2,cse=1' or '2,1'."})
    exp3_smoothing: float = field(default=0.9, metadata={"help": "For --sampler exp3: alpha, the old reward's weight."})
    exp3_loss_scaling: Literal["first", "none"] = field(default="first", metadata={
        "help": "For --sampler exp3: each loss over its objective's first (first), or the raw loss as ODM (none)."})
    meta_eval_batches: int = field(default=1, metadata={"help": "Meta-test batches per objective and process."})
    baseline_meta_test: bool = field(default=False, metadata={"help": "Meta-test also for samplers that do not need it."})
    cse_gather: bool = field(default=False, metadata={"help": "CSE takes its negatives from every process's sequences."})
    noise_probability: float = field(default=0.15, metadata={
        "aliases": ["--mlm_probability"], "help": "Share of tokens masked, inserted or deleted."})
    entity_tagger: str = field(default="stanza", metadata={
        "choices": list(ENTITY_TAGGERS), "help": "EMLM's entities: stanza (the paper's), spacy, or an existing column."})
    entity_column: str | None = field(default=None, metadata={"help": "With --entity_tagger column: the spans column."})

    skip_nonfinite_steps: int = field(default=0, metadata={
        "help": "Skip up to N steps whose loss or gradient norm is NaN or infinite; one more stops the run."})
    head_warmup_steps: int = field(default=0, metadata={"help": "First train the heads the checkpoint lacks for N steps "
                                                         "on a frozen encoder; counted in --max_steps."})
    head_warmup_learning_rate: float = field(default=1e-3, metadata={"help": "The heads' rate during the warm-up."})


def float_or_none(text):
    return None if str(text).lower() == "none" else float(text)


class ArgumentParser(HfArgumentParser):
    """Bad flags end like every other bad input: one line ``error: ...`` and exit code 2."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        # HfArgumentParser reads a float field as float; the script's --reward_floor also takes 'none'.
        self._option_string_actions["--reward_floor"].type = float_or_none

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    """MometasArguments and TrainingArguments; --paper_reward fills in what the command line did not set."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser((MometasArguments, TrainingArguments))
    try:
        args, training_args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments' own checks
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.paper_reward:
        apply_paper_reward(args, typed_dests(parser, argv))
    return args, training_args


def typed_dests(parser, argv):
    """The destinations the command line sets, however spelled (``--no_x``, an alias, ``--x=v``)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    typed, _ = parser.parse_known_args(argv)
    return set(vars(typed))


def parse_weights(spec):
    if spec is None:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise MometasInputError(f"sampler_weights: expected 'mlm=2,cse=1' or '2,1' numbers, got {spec!r}") from None


def check_args(args, training_args):
    """The checks that need no model and no data, before anything is loaded."""
    if args.model_name_or_path is None and args.config_name is None:
        raise MometasInputError("model_name_or_path: required (or --config_name with --tokenizer_name)")
    if args.model_name_or_path is None and args.tokenizer_name is None:
        raise MometasInputError("tokenizer_name: required with --config_name and no --model_name_or_path")
    if args.train_file is None and args.dataset_name is None:
        raise MometasInputError("no corpus given: pass --train_file or --dataset_name")
    if not 0 < args.validation_split_percentage < 100:
        raise MometasInputError(f"validation_split_percentage: expected a number in (0, 100), got {args.validation_split_percentage:g}")
    if args.max_seq_length < 8:
        raise MometasInputError(f"max_seq_length: expected at least 8, got {args.max_seq_length}")
    if args.meta_eval_batches < 1:
        raise MometasInputError(f"meta_eval_batches: expected a positive integer, got {args.meta_eval_batches}")
    if not (math.isfinite(args.noise_probability) and 0 <= args.noise_probability <= 1):
        raise MometasInputError(f"noise_probability: expected a number in [0, 1], got {args.noise_probability:g}")
    if args.preprocessing_num_workers is not None and args.preprocessing_num_workers < 1:
        raise MometasInputError(f"preprocessing_num_workers: expected at least 1, got {args.preprocessing_num_workers}")
    if args.streaming and training_args.max_steps <= 0:
        raise MometasInputError("streaming: a stream has no known length; give --max_steps")
    if training_args.resume_from_checkpoint is None and (Path(training_args.output_dir) / "sampler_history.jsonl").is_file():
        raise MometasInputError(f"output_dir: {training_args.output_dir} holds another run's sampler_history.jsonl; pass "
                                "--resume_from_checkpoint latest to continue it or choose another folder")


def make_sampler(args, objectives, seed):
    """The script's make_sampler: every reward and sampler flag reaches the sampler, which checks them."""
    return build_sampler(
        args.sampler, objectives, meta_length=args.meta_length, seed=seed, reward=args.reward,
        meta_step_size=args.meta_step_size, entropy_lambda=args.entropy_lambda,
        entropy_lambda_schedule=args.entropy_lambda_schedule, weights=parse_weights(args.sampler_weights),
        smoothing=args.exp3_smoothing, loss_scaling=args.exp3_loss_scaling, reward_floor=args.reward_floor,
        reward_dead_zone=args.reward_dead_zone, reward_objectives=args.reward_objectives,
        reward_baseline=args.reward_baseline, reward_baseline_decay=args.reward_baseline_decay,
        reward_normalize=args.reward_normalize, min_probability=args.min_probability,
    )


def load_model(args, objectives):
    """The shared encoder under a head per objective (a registered objective brings its head type), and
    the objectives whose heads the checkpoint lacked."""
    flag, name = ("config_name", args.config_name) if args.config_name else ("model_name_or_path", args.model_name_or_path)
    heads = objective_heads(objectives)
    hub = dict(cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    try:
        if args.config_name:
            base = AutoConfig.from_pretrained(name, **hub).to_dict()
            base.pop("objectives", None)
            return MometasForPreTraining(MometasConfig(**{**base, "objectives": heads})), list(objectives)
        model, info = MometasForPreTraining.from_pretrained(name, objectives=heads, output_loading_info=True,
                                                            cache_dir=args.cache_dir)
        return model, lacking_heads(heads, info["missing_keys"])
    except (OSError, ValueError) as e:
        raise MometasInputError(f"{flag}: {name} holds no usable BERT ({str(e).strip().splitlines()[0][:200]})") from None


def sequences(args, tokenizer, objectives, seed):
    """Train and meta-test sequences, made as run_mometas_pretraining.py makes them (cached datasets.map steps;
    with --streaming, as the Trainer's DataLoader reads the stream)."""
    needs_entities = any(OBJECTIVES[name].needs_entities for name in objectives)
    builder = SequenceBuilder(tokenizer, sequence_block(args.max_seq_length, objectives, args.noise_probability),
                              line_by_line=args.line_by_line, entity_tagger=args.entity_tagger if needs_entities else None,
                              entity_column=args.entity_column,
                              num_proc=None if args.streaming else args.preprocessing_num_workers)
    raw = load_raw_corpus(dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
                          train_file=args.train_file, validation_file=args.validation_file,
                          validation_split_percentage=args.validation_split_percentage, streaming=args.streaming,
                          text_column=args.text_column, seed=seed, cache_dir=args.cache_dir,
                          trust_remote_code=args.trust_remote_code)
    source = f"--train_file {args.train_file}" if args.train_file else f"--dataset_name {args.dataset_name}"
    if args.streaming:
        # The whole stream: Accelerate gives each process its share of every batch.
        train = StreamingSequences(raw["train"], builder)
        if next(iter_rows(train.share()[0], 1), None) is None:
            raise MometasInputError(f"{source}: the streamed training corpus has no document")
        # Meta-test draws random batches, so the (small) validation stream is held in memory.
        validation = materialise(builder(reread(raw["validation"])), builder)
    else:
        train, validation = builder(raw["train"]), builder(raw["validation"])
    sized = {"validation": validation} if args.streaming else {"training": train, "validation": validation}
    for name, split in sized.items():
        if len(split) == 0:
            raise MometasInputError(f"{source} gives no {name} sequence of at least 8 tokens")
    return train, validation


def last_good_checkpoint(output_dir, step):
    """The newest complete checkpoint-N (its trainer_state.json written last) from before ``step``."""
    done = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
            and int(p.name.split("-")[-1]) < step and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def train(args, training_args):
    check_args(args, training_args)
    objectives = parse_objectives(args.objectives)
    if any(OBJECTIVES[name].needs_entities for name in objectives):
        check_entity_tagger(args.entity_tagger, args.entity_column)  # installed, with its model: before any work
    # Built first: the sampler checks its own flags (--meta_length, --reward_floor, ...) before any work.
    sampler = make_sampler(args, objectives, training_args.seed)
    flag = "tokenizer_name" if args.tokenizer_name else "model_name_or_path"
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, cache_dir=args.cache_dir,
                                                  trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise MometasInputError(f"{flag}: no usable tokenizer ({str(e).strip().splitlines()[0][:200]})") from None
    set_seed(training_args.seed)  # the new heads' initialisation
    model, lacking = load_model(args, objectives)
    if args.head_warmup_steps and args.config_name:
        raise MometasInputError("head_warmup_steps: a model new from --config_name has no encoder worth freezing")
    with training_args.main_process_first(desc="tokenising and packing the corpus"):
        train_sequences, validation_sequences = sequences(args, tokenizer, objectives, training_args.seed)

    collators = build_objectives(objectives, tokenizer, noise_probability=args.noise_probability,
                                 seed=training_args.seed, max_length=args.max_seq_length)
    pad = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=args.max_seq_length if args.pad_to_max_length else None)
    trainer = MometasTrainer(
        model=model, args=training_args, train_dataset=train_sequences, eval_dataset=validation_sequences,
        processing_class=tokenizer, data_collator=pad, sampler=sampler, collators=collators,
        meta_eval_batches=args.meta_eval_batches, meta_eval_fixed=args.meta_eval_fixed,
        baseline_meta_test=args.baseline_meta_test, head_warmup_steps=args.head_warmup_steps,
        head_warmup_objectives=lacking, head_warmup_learning_rate=args.head_warmup_learning_rate,
        skip_nonfinite_steps=args.skip_nonfinite_steps, cse_gather=args.cse_gather,
    )
    resume = True if training_args.resume_from_checkpoint == "latest" else training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # refused for weights that hold NaN

    if trainer.is_world_process_zero():
        rows = read_history(training_args.output_dir)
        settings = {key: getattr(args, key) for key in (
            "meta_length", "meta_step_size", "entropy_lambda", "entropy_lambda_schedule", "reward", "reward_floor", "reward_dead_zone",
            "reward_baseline", "reward_normalize", "reward_objectives", "min_probability", "meta_eval_fixed")}
        card = build_model_card(base_model=args.model_name_or_path or args.config_name, objectives=objectives,
                                sampler_name=args.sampler, sampler_settings=settings, rows=rows,
                                total_steps=trainer.state.global_step, args={**vars(args), **training_args.to_dict()},
                                dataset_name=args.dataset_name)
        save_model_card(card, training_args.output_dir)
        print(summarize_distribution(rows, total_steps=trainer.state.global_step))
        print(f"Model, tokenizer, history, plots and model card saved in {training_args.output_dir}")
    # A gloo group left for interpreter exit can abort the process ("terminate called without an active
    # exception") after a clean run; every process leaves it together once process 0 has written the card.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.destroy_process_group()
    return trainer


# Library errors name Python arguments; where the flag is spelled differently, say the flag.
ARGUMENT_FLAGS = {"weights": "sampler_weights", "smoothing": "exp3_smoothing", "loss_scaling": "exp3_loss_scaling"}


def cli_message(error):
    message = " ".join(str(error).split())
    head, sep, rest = message.partition(":")
    if sep and " " not in head and not head.startswith("--"):
        return f"--{ARGUMENT_FLAGS.get(head, head)}:{rest}"
    return message


def main(argv=None):
    args, training_args = parse_args(argv)
    try:
        return train(args, training_args)
    except MometasInputError as error:
        print(f"error: {cli_message(error)}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as error:
        # The run stopped before the failing step was applied or saved; checkpoints before it are good.
        last = last_good_checkpoint(training_args.output_dir, error.step)
        print(f"error: {failure_message(error, skip_limit=args.skip_nonfinite_steps, last_checkpoint=last)}",
              file=sys.stderr)
        sys.exit(NONFINITE_EXIT_CODE)


if __name__ == "__main__":
    main()
