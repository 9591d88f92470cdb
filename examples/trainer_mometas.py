#!/usr/bin/env python
"""MOMETAS in a Hugging Face Trainer: continual pre-training of a BERT on several objectives,
one objective per optimizer step drawn by a sampler (mometas_utils.MometasTrainer).

    python examples/trainer_mometas.py --model_name_or_path bert-base-uncased --train_file corpus.txt \\
        --objectives mlm,cse,atd,dtd --sampler mometas --meta_length 100 \\
        --max_steps 10000 --save_steps 1000 --output_dir out/trainer-mometas

Every TrainingArguments flag works (--per_device_train_batch_size, --gradient_accumulation_steps,
--learning_rate, --save_steps, --report_to tensorboard, ...); --per_device_eval_batch_size is the
meta-test batch. The data and sampler flags are those of run_mometas_pretraining.py. The folder gets
the model, sampler_history.jsonl (the script's format), its plots, a model card and the Trainer's
checkpoint-N folders, which --resume_from_checkpoint PATH|latest continues exactly.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

from mometas_utils import (
    OBJECTIVES,
    MometasConfig,
    MometasForPreTraining,
    MometasInputError,
    MometasTrainer,
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
from mometas_utils.paper import PRETRAINING_HPARAMS, SAMPLER_DEFAULTS
from mometas_utils.head_warmup import lacking_heads
from mometas_utils.preprocess import SequenceBuilder, sequence_block


@dataclass
class MometasArguments:
    """The data and sampler flags of run_mometas_pretraining.py, under the same names."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "BERT checkpoint to continue pre-training."})
    config_name: str | None = field(default=None, metadata={"help": "A BERT config to train from scratch instead."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to use instead of the model's."})
    train_file: str | None = field(default=None, metadata={"help": "Corpus: .txt (a document per line), .json(l), .csv."})
    validation_file: str | None = field(default=None, metadata={"help": "Held-out text for meta-test."})
    validation_split_percentage: float = field(default=5, metadata={"help": "Share of documents held out for meta-test."})
    max_seq_length: int = field(default=PRETRAINING_HPARAMS["max_seq_length"], metadata={"help": "Tokens per sequence."})
    line_by_line: bool = field(default=False, metadata={"help": "One document per sequence instead of packing."})
    objectives: str = field(default="mlm,cse,atd,dtd,emlm", metadata={"help": f"Comma-separated, from {sorted(OBJECTIVES)}."})
    sampler: str = field(default="mometas", metadata={"help": "uniform, gradient, loss, mometas, fixed, exp3."})
    sampler_weights: str | None = field(default=None, metadata={"help": "For --sampler fixed: 'mlm=2,cse=1' or '2,1'."})
    meta_length: int = field(default=SAMPLER_DEFAULTS["meta_length"], metadata={"help": "K: steps between meta-tests."})
    meta_step_size: float = field(default=SAMPLER_DEFAULTS["meta_step_size"], metadata={"help": "β of the REINFORCE step."})
    entropy_lambda: float = field(default=SAMPLER_DEFAULTS["entropy_lambda"], metadata={"help": "λ of the entropy bonus."})
    reward_objectives: str | None = field(default=None, metadata={"help": "Objectives whose losses make the reward."})
    min_probability: float = field(default=0.0, metadata={"help": "Least probability of every objective (paper: 0)."})
    meta_eval_batches: int = field(default=1, metadata={"help": "Meta-test batches per objective and process."})
    meta_eval_fixed: bool = field(default=True, metadata={"help": "Meta-test on the same batches every time."})
    baseline_meta_test: bool = field(default=False, metadata={"help": "Meta-test also for samplers that do not need it."})
    noise_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked, inserted or deleted."})
    entity_tagger: str = field(default="stanza", metadata={"help": "EMLM's entities: stanza (the paper's) or spacy."})
    head_warmup_steps: int = field(default=0, metadata={"help": "First train the heads the checkpoint lacks for N steps "
                                                         "on a frozen encoder; counted in --max_steps."})
    head_warmup_learning_rate: float = field(default=1e-3, metadata={"help": "The heads' rate during the warm-up."})


class ArgumentParser(HfArgumentParser):
    """Bad flags end like every other bad input: one line ``error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


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
    if args.train_file is None:
        raise MometasInputError("train_file: required")
    if not 0 < args.validation_split_percentage < 100:
        raise MometasInputError(f"validation_split_percentage: expected a number in (0, 100), got {args.validation_split_percentage:g}")
    if args.max_seq_length < 8:
        raise MometasInputError(f"max_seq_length: expected at least 8, got {args.max_seq_length}")
    if args.meta_eval_batches < 1:
        raise MometasInputError(f"meta_eval_batches: expected a positive integer, got {args.meta_eval_batches}")
    if training_args.resume_from_checkpoint is None and (Path(training_args.output_dir) / "sampler_history.jsonl").is_file():
        raise MometasInputError(f"output_dir: {training_args.output_dir} holds another run's sampler_history.jsonl; pass "
                                "--resume_from_checkpoint latest to continue it or choose another folder")


def load_model(args, objectives):
    """The shared encoder under a head per objective (a registered objective brings its head type), and
    the objectives whose heads the checkpoint lacked."""
    flag, name = ("config_name", args.config_name) if args.config_name else ("model_name_or_path", args.model_name_or_path)
    heads = objective_heads(objectives)
    try:
        if args.config_name:
            base = AutoConfig.from_pretrained(name).to_dict()
            base.pop("objectives", None)
            return MometasForPreTraining(MometasConfig(**{**base, "objectives": heads})), list(objectives)
        model, info = MometasForPreTraining.from_pretrained(name, objectives=heads, output_loading_info=True)
        return model, lacking_heads(heads, info["missing_keys"])
    except (OSError, ValueError) as e:
        raise MometasInputError(f"{flag}: {name} holds no usable BERT ({str(e).strip().splitlines()[0][:200]})") from None


def sequences(args, tokenizer, objectives, seed):
    """Train and meta-test sequences, made as run_mometas_pretraining.py makes them (cached datasets.map steps)."""
    needs_entities = any(OBJECTIVES[name].needs_entities for name in objectives)
    builder = SequenceBuilder(tokenizer, sequence_block(args.max_seq_length, objectives, args.noise_probability),
                              line_by_line=args.line_by_line, entity_tagger=args.entity_tagger if needs_entities else None)
    raw = load_raw_corpus(train_file=args.train_file, validation_file=args.validation_file,
                          validation_split_percentage=args.validation_split_percentage, seed=seed)
    train, validation = builder(raw["train"]), builder(raw["validation"])
    for split, name in ((train, "training"), (validation, "validation")):
        if len(split) == 0:
            raise MometasInputError(f"train_file: {args.train_file} gives no {name} sequence of at least 8 tokens")
    return train, validation


def train(args, training_args):
    check_args(args, training_args)
    objectives = parse_objectives(args.objectives)
    if any(OBJECTIVES[name].needs_entities for name in objectives):
        if args.entity_tagger not in ("stanza", "spacy"):
            raise MometasInputError(f"entity_tagger: expected stanza or spacy, got {args.entity_tagger!r}")
        check_entity_tagger(args.entity_tagger)  # installed, with its model: before any work
    # Built first: the sampler checks its own flags (--meta_length, --meta_step_size, ...) before any work.
    sampler = build_sampler(args.sampler, objectives, meta_length=args.meta_length, seed=training_args.seed,
                            meta_step_size=args.meta_step_size, entropy_lambda=args.entropy_lambda,
                            reward_objectives=args.reward_objectives, min_probability=args.min_probability,
                            weights=parse_weights(args.sampler_weights))
    flag = "tokenizer_name" if args.tokenizer_name else "model_name_or_path"
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path)
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
    trainer = MometasTrainer(
        model=model, args=training_args, train_dataset=train_sequences, eval_dataset=validation_sequences,
        processing_class=tokenizer, sampler=sampler, collators=collators,
        meta_eval_batches=args.meta_eval_batches, meta_eval_fixed=args.meta_eval_fixed,
        baseline_meta_test=args.baseline_meta_test, head_warmup_steps=args.head_warmup_steps,
        head_warmup_objectives=lacking, head_warmup_learning_rate=args.head_warmup_learning_rate,
    )
    resume = True if training_args.resume_from_checkpoint == "latest" else training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()

    if trainer.is_world_process_zero():
        rows = read_history(training_args.output_dir)
        settings = {key: getattr(args, key) for key in ("meta_length", "meta_step_size", "entropy_lambda",
                                                        "reward_objectives", "min_probability", "meta_eval_fixed")}
        card = build_model_card(base_model=args.model_name_or_path or args.config_name, objectives=objectives,
                                sampler_name=args.sampler, sampler_settings=settings, rows=rows,
                                total_steps=trainer.state.global_step, args={**vars(args), **training_args.to_dict()})
        save_model_card(card, training_args.output_dir)
        print(summarize_distribution(rows, total_steps=trainer.state.global_step))
        print(f"Model, tokenizer, history, plots and model card saved in {training_args.output_dir}")
    # A gloo group left for interpreter exit can abort the process ("terminate called without an active
    # exception") after a clean run; every process leaves it together once process 0 has written the card.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.destroy_process_group()
    return trainer


# Library errors name Python arguments; where the flag is spelled differently, say the flag.
ARGUMENT_FLAGS = {"weights": "sampler_weights"}


def cli_message(error):
    message = " ".join(str(error).split())
    head, sep, rest = message.partition(":")
    if sep and " " not in head and not head.startswith("--"):
        return f"--{ARGUMENT_FLAGS.get(head, head)}:{rest}"
    return message


def main(argv=None):
    parser = ArgumentParser((MometasArguments, TrainingArguments))
    try:
        args, training_args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments' own checks
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return train(args, training_args)
    except MometasInputError as error:
        print(f"error: {cli_message(error)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
