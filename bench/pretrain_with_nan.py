"""run_mometas_pretraining.py with the loss of chosen training steps made NaN, for bench/gpu_check.sh.

    accelerate launch bench/pretrain_with_nan.py --nan_at_steps 5 -- <the script's flags>

A real run seldom produces a NaN when asked to, so the check of ``--skip_nonfinite_steps`` under
fp16 (the loss scaler's path) plants one: the Nth training forward of each process returns a NaN
loss. With ``MOMETAS_CPU_GRAD_SCALER=1`` the Accelerator also gets a CPU ``torch.amp.GradScaler``
(Accelerate makes none on CPU), so a CPU rehearsal goes through the same fp16 code as a GPU.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("run_mometas_pretraining", ROOT / "run_mometas_pretraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nan_at_steps", default="", help="Comma-separated training steps (from 1) whose loss is NaN.")
    own = parser.parse_args(argv[:split])
    steps = {int(s) for s in own.nan_at_steps.split(",") if s.strip()}
    module = load_script()
    real_forward = module.MometasForPreTraining.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in steps:
                output.loss = output.loss * float("nan")
        return output

    module.MometasForPreTraining.forward = forward
    if os.environ.get("MOMETAS_CPU_GRAD_SCALER") == "1":
        base = module.Accelerator

        class ScaledAccelerator(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if self.mixed_precision == "fp16" and self.device.type == "cpu" and self.scaler is None:
                    self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16)
                    print("pretrain_with_nan: a CPU torch.amp.GradScaler stands in for the one Accelerate makes on a "
                          "GPU", file=sys.stderr, flush=True)

        module.Accelerator = ScaledAccelerator
    return module.main(argv[split + 1:])


if __name__ == "__main__":
    main()
