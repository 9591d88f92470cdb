#!/usr/bin/env python
"""MOMETAS in a training loop of your own: the loop of docs/library.md, as a file that runs.

    python examples/own_loop.py --model_name_or_path bert-base-uncased --train_file corpus.txt --max_steps 1000

Plain PyTorch on one device (a GPU if there is one): draw an objective, train one step on it (meta-train); every K steps
(the meta length) measure every objective's validation loss (meta-test) and let the sampler take
its reward and REINFORCE step. For processes, checkpoints, trackers and history use
run_mometas_pretraining.py or MometasTrainer (examples/trainer_mometas.py).
"""

import argparse
import itertools

import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from mometas_utils import (
    MometasForPreTraining,
    PadCollator,
    build_objectives,
    build_sampler,
    encoder_grad_norm,
    load_raw_corpus,
    meta_test,
    meta_test_batches,
    pack_sequences,
    tokenize_corpus,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="A BERT checkpoint (Hub id or folder).")
    parser.add_argument("--train_file", required=True, help="A .txt corpus, one document per line.")
    parser.add_argument("--objectives", default="mlm,cse,atd,dtd", help="Comma-separated objectives.")
    parser.add_argument("--sampler", default="mometas", choices=["uniform", "gradient", "loss", "mometas"],
                        help="The objective sampler (fixed needs weights: build_sampler(..., weights=...)).")
    parser.add_argument("--meta_length", type=int, default=100, help="K: steps between meta-tests.")
    parser.add_argument("--max_steps", type=int, default=1000, help="Optimizer steps.")
    parser.add_argument("--max_seq_length", type=int, default=128, help="Tokens per packed sequence.")
    parser.add_argument("--batch_size", type=int, default=8, help="Training sequences per step.")
    parser.add_argument("--eval_batch_size", type=int, default=16, help="Validation sequences per meta-test.")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="AdamW learning rate.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampler, the corruptions and the data order.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    raw = load_raw_corpus(train_file=args.train_file, seed=args.seed)  # splits that share no document
    train, validation = (pack_sequences(tokenize_corpus(raw[split], tokenizer, with_entities=False), tokenizer,
                                        args.max_seq_length) for split in ("train", "validation"))

    collators = build_objectives(args.objectives, tokenizer, seed=args.seed, max_length=args.max_seq_length)
    # Meta-test reseeds its collators every time: its own copies leave the training noise alone.
    eval_collators = build_objectives(args.objectives, tokenizer, seed=args.seed, max_length=args.max_seq_length)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MometasForPreTraining.from_pretrained(args.model_name_or_path, objectives=list(collators)).to(device)
    sampler = build_sampler(args.sampler, list(collators), meta_length=args.meta_length, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    pad = PadCollator(tokenizer.pad_token_id)
    epochs = (DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=pad) for _ in itertools.count())
    loader = itertools.islice(itertools.chain.from_iterable(epochs), args.max_steps)
    # The same validation batches at every meta-test, so b_i and a_i are measured on the same text.
    validation_batches = meta_test_batches(validation, batch_size=args.eval_batch_size, num_batches=1, seed=args.seed,
                                           step=0, process_index=0, pad=pad, fixed=True)

    def validation_losses(model):
        return meta_test(model, validation_batches, eval_collators, seed=args.seed, device=model.device)

    model.train()  # from_pretrained returns the model in eval mode: no dropout, and CSE's two views would be one
    sampler.update(validation_losses(model))                     # step 0: the baselines b_i
    for step, padded in enumerate(loader, start=1):              # batches padded by PadCollator
        objective = sampler.sample()
        batch = {key: value.to(model.device) for key, value in collators[objective](padded).items()}
        loss = model(objective=objective, **batch).loss
        loss.backward()
        sampler.observe(objective, loss.item(), encoder_grad_norm(model))  # Gb samples by the gradient norm
        optimizer.step(); optimizer.zero_grad()
        if step % sampler.meta_length == 0:
            update = sampler.update(validation_losses(model))    # reward and REINFORCE step
            probabilities = " ".join(f"{name}={p:.3f}" for name, p in update["probabilities"].items())
            reward = "none" if update["reward"] is None else f"{update['reward']:+.4f}"
            print(f"step {step}: reward {reward}, probabilities {probabilities}")
    return sampler


if __name__ == "__main__":
    main()
