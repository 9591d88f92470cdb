"""--cse_gather: SimCSE negatives from every process, checked against one process on the whole batch.

What "equal" means here. Two gloo processes hold 3 and 2 of the 5 sequences of a batch
(unequal on purpose: a short last batch). Each wraps the same model in DDP and calls
``model(objective="cse", cse_gather=True, ...)`` on its rows:

* loss: every process returns the mean InfoNCE over all 5 rows, the loss one process
  computes on the concatenated batch (what ``accelerator.reduce(loss, "mean")`` logs);
* gradient: after ``backward``, DDP averages the gradients over the 2 processes; the
  result must be the gradient of that single-process loss w.r.t. every parameter.

The model runs in float64 with dropout 0 (the two SimCSE views are then identical and
the same in both computations), so the only differences left are summation orders.
A second check works on raw embeddings with two *different* views, which the model
check cannot tell apart, so a swapped or misplaced slot would show.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import accelerate_launch
from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.modeling_mometas import MometasForPreTraining, contrastive_loss

WORLD = 2
ROWS = [3, 2]
CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=32, initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
              objectives=["mlm", "cse"])
TEMPERATURE = 0.05
TOLERANCE = 1e-10  # float64; an error in the formula moves things by 1e-3 or more


def whole_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (sum(ROWS), 12), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # padded rows on both processes
    attention_mask[4, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def local_rows(rank):
    start = sum(ROWS[:rank])
    return slice(start, start + ROWS[rank])


def max_diff(a, b):
    return float((a - b).abs().max())


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        report = compare(rank)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
        dist.barrier()
    finally:
        # DDP is gone by now (compare returned): destroying the group under a live DDP can hang.
        dist.destroy_process_group()


def compare(rank):
    torch.manual_seed(0)
    model = MometasForPreTraining(MometasConfig(**CONFIG)).double()
    single = MometasForPreTraining(MometasConfig(**CONFIG)).double()
    single.load_state_dict(model.state_dict())
    batch = whole_batch()
    mine = {k: v[local_rows(rank)] for k, v in batch.items()}
    report = {}

    # One process, the concatenated batch: the reference.
    expected = single(objective="cse", **batch)
    expected.loss.backward()

    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    got = ddp(objective="cse", cse_gather=True, **mine)
    got.loss.backward()
    report["loss"] = [got.loss.item(), expected.loss.item()]
    report["logits_shape"] = list(got.logits.shape)
    report["loss_diff"] = abs(got.loss.item() - expected.loss.item())
    grads = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    ddp_grads = dict(model.named_parameters())
    report["params_with_grad"] = [len(grads), sum(p.grad is not None for p in ddp_grads.values())]
    report["grad_diff"] = max(max_diff(ddp_grads[n].grad, g) for n, g in grads.items())
    report["grad_scale"] = max(float(g.abs().max()) for g in grads.values())
    # Without gathering, the same call sees only its own rows as negatives: a different loss.
    with torch.no_grad():
        report["local_loss_diff"] = abs(float(model(objective="cse", **mine).loss) - expected.loss.item())

    # Meta-test: eval mode, inference mode. Gathering is only done when asked for.
    ddp.eval()
    single.eval()
    with torch.inference_mode():
        report["eval_gather_diff"] = abs(float(ddp(objective="cse", cse_gather=True, **mine).loss)
                                         - float(single(objective="cse", **batch).loss))
        report["eval_local_diff"] = abs(float(ddp(objective="cse", **mine).loss)
                                        - float(single(objective="cse", **mine).loss))

    # Raw embeddings with two different views.
    generator = torch.Generator().manual_seed(1)
    z1_all = torch.randn(sum(ROWS), 8, generator=generator, dtype=torch.float64)
    z2_all = torch.randn(sum(ROWS), 8, generator=generator, dtype=torch.float64)
    z1 = z1_all[local_rows(rank)].clone().requires_grad_()
    z2 = z2_all[local_rows(rank)].clone().requires_grad_()
    loss, similarity = contrastive_loss(z1, z2, TEMPERATURE, gather=True)
    loss.backward()
    z1_ref, z2_ref = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    loss_ref, similarity_ref = contrastive_loss(z1_ref, z2_ref, TEMPERATURE)
    loss_ref.backward()
    report["views_loss_diff"] = abs(loss.item() - loss_ref.item())
    report["views_similarity_diff"] = max_diff(similarity, similarity_ref)
    # This process's backward carries WORLD times its share; DDP's average divides it back.
    report["views_grad_diff"] = max(max_diff(z1.grad / WORLD, z1_ref.grad[local_rows(rank)]),
                                    max_diff(z2.grad / WORLD, z2_ref.grad[local_rows(rank)]))
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cse_gather")
    mp.spawn(worker, args=(str(folder / "init"), folder), nprocs=WORLD, join=True)
    reports = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    print("\n" + json.dumps(reports, indent=1), file=sys.stderr)
    return reports


def test_loss_is_the_single_process_loss_on_the_whole_batch(reports):
    for report in reports:
        assert report["logits_shape"] == [5, 5], "every process scores all 5 x 5 pairs"
        assert report["loss_diff"] < TOLERANCE, report
    assert reports[0]["loss"][0] == reports[1]["loss"][0], "both processes return the same value"
    # The test can fail: per-process negatives give another loss.
    assert all(r["local_loss_diff"] > 1e-3 for r in reports)


def test_ddp_averaged_gradient_is_the_single_process_gradient(reports):
    for report in reports:
        assert report["params_with_grad"][0] == report["params_with_grad"][1] > 0
        # A missing world-size factor would leave half the gradient: a gap of grad_scale / 2.
        assert report["grad_scale"] > 1e-3
        assert report["grad_diff"] < TOLERANCE, report


def test_two_different_views_land_in_their_own_slots(reports):
    for report in reports:
        assert report["views_similarity_diff"] < TOLERANCE, report
        assert report["views_loss_diff"] < TOLERANCE, report
        assert report["views_grad_diff"] < TOLERANCE, report


def test_eval_mode_gathers_only_when_asked(reports):
    for report in reports:
        assert report["eval_gather_diff"] < TOLERANCE, report
        assert report["eval_local_diff"] < TOLERANCE, report


def test_one_process_ignores_the_flag():
    torch.manual_seed(0)
    model = MometasForPreTraining(MometasConfig(**CONFIG))
    batch = whole_batch()
    assert not dist.is_initialized()
    assert torch.equal(model(objective="cse", cse_gather=True, **batch).loss.detach(),
                       model(objective="cse", **batch).loss.detach())


def test_script_flag_reaches_the_model_on_two_processes(tiny_bert, english_corpus, tmp_path, default_port_taken):
    """Step 1's CSE loss (no update yet) with 2 x 4 sequences: 8 candidates per row with the flag, 4 without."""
    root = Path(__file__).resolve().parents[1]
    launcher = accelerate_launch(2)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "true"}
    first_loss = {}
    for label, extra in (("local", []), ("gathered", ["--cse_gather", "--fused_adamw"])):
        out = tmp_path / label
        args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, "--objectives", "cse",
                "--sampler", "uniform", "--max_seq_length", 32, "--per_device_train_batch_size", 4,
                "--max_train_steps", 1, "--meta_length", 1, "--output_dir", out, *extra]
        result = subprocess.run([*launcher, str(root / "run_mometas_pretraining.py"), *map(str, args)], cwd=root,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        row = json.loads((out / "sampler_history.jsonl").read_text().splitlines()[-1])
        assert row["step"] == 1 and row["num_processes"] == 2
        first_loss[label] = row["train_loss"]["cse"]
    print(f"\nstep-1 CSE loss on 2 processes: {first_loss}", file=sys.stderr)
    # Near initialisation every candidate is about as likely: loss ~ ln(candidates).
    assert first_loss["gathered"] > first_loss["local"] + 0.3, first_loss


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
