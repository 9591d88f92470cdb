"""DeepSpeed and FSDP: what the pre-training loop refuses before training, and what it computes on shards.

DeepSpeed is not installed here (and Accelerate builds no DeepSpeed or FSDP state on CPU), so
the refusals are tested on accelerators that report those launches; the sharded gradient norm
is tested on real FSDP2 (``fully_shard``) and FSDP1 (``use_orig_params=True``) shards, two gloo
processes on CPU.
"""

import copy
import json
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate.utils import DistributedType

from mometas_utils.errors import MometasInputError
from mometas_utils.meta_test import encoder_grad_norm, unscaled_encoder_grad_norm
from mometas_utils.parallel import check_parallel_support, loss_scaled, shards_parameters, to_device
from test_pretraining import QUICK, load_script


def fake_accelerator(kind, *, zero_stage=None, gradient_clipping="auto", fsdp_version=1, use_orig_params=False,
                     mixed_precision="no"):
    """What an Accelerator under that launch reports: its distributed type and its plugin's settings."""
    deepspeed = SimpleNamespace(zero_stage=zero_stage, deepspeed_config={"gradient_clipping": gradient_clipping})
    fsdp = SimpleNamespace(fsdp_version=fsdp_version, use_orig_params=use_orig_params)
    return SimpleNamespace(distributed_type=kind, scaler=None, mixed_precision=mixed_precision,
                           state=SimpleNamespace(deepspeed_plugin=deepspeed if kind == DistributedType.DEEPSPEED else None,
                                                 fsdp_plugin=fsdp if kind == DistributedType.FSDP else None))


def refusal(accelerator, **settings):
    settings = {"sampler": "mometas", "skip_nonfinite_steps": 0, "max_grad_norm": 1.0, **settings}
    with pytest.raises(MometasInputError) as error:
        check_parallel_support(accelerator, **settings)
    return str(error.value)


def test_deepspeed_refuses_gb_and_skipping_and_takes_the_clipping_flag():
    deepspeed = fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2)
    message = refusal(deepspeed, sampler="gradient")
    assert message.startswith("--sampler gradient: under DeepSpeed accelerator.backward already takes the optimizer step")
    message = refusal(deepspeed, skip_nonfinite_steps=3)
    assert message.startswith("--skip_nonfinite_steps 3: under DeepSpeed") and "no step can be skipped" in message
    # Everything else runs, and --max_grad_norm becomes the engine's clipping where the config leaves it to us.
    check_parallel_support(deepspeed, sampler="mometas", skip_nonfinite_steps=0, max_grad_norm=0.5)
    assert deepspeed.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.5
    fixed = fake_accelerator(DistributedType.DEEPSPEED, gradient_clipping=2.0)
    assert refusal(fixed, max_grad_norm=1.0) == ("--max_grad_norm 1: under DeepSpeed the config's gradient_clipping "
                                                 "(2) clips the gradients, not this flag; make the two equal")
    check_parallel_support(fixed, sampler="loss", skip_nonfinite_steps=0, max_grad_norm=2.0)
    # DeepSpeed's own fp16 loss scaler skips overflowing steps: an infinite gradient norm is not an error there.
    assert loss_scaled(fake_accelerator(DistributedType.DEEPSPEED, mixed_precision="fp16"))
    assert not loss_scaled(fake_accelerator(DistributedType.DEEPSPEED, mixed_precision="bf16"))


def test_fsdp_gb_needs_the_original_parameters_and_nothing_else_is_refused():
    message = refusal(fake_accelerator(DistributedType.FSDP), sampler="gradient")
    assert message.startswith("--sampler gradient: FSDP1 without use_orig_params") and "fsdp_version: 2" in message
    for accelerator in (fake_accelerator(DistributedType.FSDP, use_orig_params=True),
                        fake_accelerator(DistributedType.FSDP, fsdp_version=2),
                        fake_accelerator(DistributedType.MULTI_GPU), fake_accelerator(DistributedType.NO)):
        check_parallel_support(accelerator, sampler="gradient", skip_nonfinite_steps=5, max_grad_norm=1.0)
    check_parallel_support(fake_accelerator(DistributedType.FSDP), sampler="mometas", skip_nonfinite_steps=5,
                           max_grad_norm=1.0)
    assert shards_parameters(fake_accelerator(DistributedType.FSDP))
    assert shards_parameters(fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3))
    assert not shards_parameters(fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2))
    assert not shards_parameters(fake_accelerator(DistributedType.MULTI_GPU))


def test_the_script_refuses_gb_under_deepspeed_before_anything_loads(tiny_bert, english_corpus, tmp_path, capsys,
                                                                    monkeypatch):
    module = load_script()

    class DeepSpeedAccelerator(module.Accelerator):
        @property
        def distributed_type(self):
            return DistributedType.DEEPSPEED

    monkeypatch.setattr(module, "Accelerator", DeepSpeedAccelerator)
    out = tmp_path / "out"
    with mock.patch.object(module, "load_model", side_effect=AssertionError("loaded the model")):
        for extra, flag in ((["--sampler", "gradient"], "--sampler gradient"),
                            (["--skip_nonfinite_steps", "2"], "--skip_nonfinite_steps 2")):
            argv = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK, "--max_train_steps", 2,
                    "--output_dir", out, *extra]
            with pytest.raises(SystemExit) as exit_:
                module.main([str(a) for a in argv])
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.startswith("error: ")]
            assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
            assert lines[0].startswith(f"error: {flag}: under DeepSpeed"), lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_zero3_placeholders_are_not_taken_for_finite_weights():
    """Under ZeRO-3 a parameter is an empty placeholder; the weights are its partition, ds_tensor."""
    module = load_script()
    layer = torch.nn.Linear(3, 2)
    for param, partition in ((layer.weight, torch.tensor([1.0, float("nan"), 2.0])), (layer.bias, torch.ones(1))):
        param.data = torch.empty(0)  # what ZeRO-3 leaves outside a forward pass
        param.ds_tensor = partition
    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor)
    with pytest.raises(module.NonFiniteError, match="the weights hold NaN or infinity"):
        module.check_finite_weights(accelerator, layer, 7, "mlm")
    layer.weight.ds_tensor = torch.ones(3)
    module.check_finite_weights(accelerator, layer, 7, "mlm")


def test_batches_go_through_pinned_memory_on_cuda_only(tmp_path):
    tensor = mock.MagicMock()
    tensor.is_pinned.return_value = False
    moved = to_device({"input_ids": tensor}, torch.device("cuda"))
    tensor.pin_memory.assert_called_once_with()
    tensor.pin_memory.return_value.to.assert_called_once_with(torch.device("cuda"), non_blocking=True)
    assert moved["input_ids"] is tensor.pin_memory.return_value.to.return_value

    on_cpu = mock.MagicMock()
    to_device({"input_ids": on_cpu}, torch.device("cpu"))
    on_cpu.pin_memory.assert_not_called()
    on_cpu.to.assert_called_once_with(torch.device("cpu"), non_blocking=False)

    module = load_script()
    args = module.parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", str(tmp_path)])
    assert module.train_loader([[1]], args, list, torch.device("cuda")).pin_memory is True
    assert module.train_loader([[1]], args, list, torch.device("cpu")).pin_memory is False


# ---------------------------------------------------------------------------- the gradient norm on FSDP shards

WORLD = 2


class Tiny(torch.nn.Module):
    """An encoder (``bert``, what Gb measures) under a head (which it does not)."""

    def __init__(self):
        super().__init__()
        self.bert = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.bert(x)).pow(2).mean()


def inputs(rank):
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(100 + rank))


def grad_norm_worker(rank, folder, flavour):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init_{flavour}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = Tiny()
    reference = copy.deepcopy(model)
    if flavour == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in (model.bert[0], model.bert[2]):
            fully_shard(layer)
        wrapped = fully_shard(model)
        unwrap = lambda m: m  # noqa: E731  (fully_shard shards in place)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
        unwrap = lambda m: m.module  # noqa: E731
    wrapped(inputs(rank)).backward()

    def reduce(tensor, reduction):
        assert reduction == "sum"
        dist.all_reduce(tensor)
        return tensor

    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, scaler=None, device=torch.device("cpu"),
                                  reduce=reduce, unwrap_model=unwrap, state=SimpleNamespace(deepspeed_plugin=None))
    report = {"sharded": unscaled_encoder_grad_norm(accelerator, wrapped),
              "this_shard": encoder_grad_norm(unwrap(wrapped))}
    # FSDP averages the gradients of the processes: the reference is the mean loss on one whole model.
    (sum(reference(inputs(r)) for r in range(WORLD)) / WORLD).backward()
    report["reference"] = encoder_grad_norm(reference)
    (folder / f"{flavour}_rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.mark.parametrize("flavour", ["fsdp2", "fsdp1_use_orig_params"])
def test_gb_norm_under_fsdp_is_the_whole_gradient_norm_on_every_process(flavour, tmp_path):
    mp.spawn(grad_norm_worker, args=(tmp_path, flavour), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"{flavour}_rank{rank}.json").read_text()) for rank in range(WORLD)]
    print(f"\n{flavour}: {reports}", file=sys.stderr)
    for report in reports:
        assert report["sharded"] == pytest.approx(report["reference"], rel=1e-5), report
    # What each process saw before the shards were summed: a part of the norm, different per process.
    assert all(report["this_shard"] < report["reference"] * (1 - 1e-3) for report in reports), reports
