"""Distributed training (issue 6): ``torchrun`` with two gloo processes on CPU.

One module-scoped run: ``python -m torch.distributed.run --standalone --nproc_per_node 2`` starts this
file as the training script (``__main__`` below calls the real ``actionpp train`` CLI after installing
small probes), and rank 1 alone asks to stop in the middle of fine-tuning.  Each rank dumps its full
training state when ``Trainer.run`` returns and logs every checkpoint/model file it writes.  Then:
every rank holds bit-identical weights, BN statistics, ISD/SAACL queues, centroids, allocation and
optimizer state; only rank 0 wrote files; a single process resumes from the checkpoint (another number
of ranks), finishes, and the model loads on CPU with ``model_io.load_model``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# tiny ACDC-like run: 2 warm-up + 2 joint + 4 fine-tuning iterations, stopped after fine-tuning step 2
TRAIN_ARGS = [
    "--preset", "acdc", "--patch-size", "32,32", "--batch-size", "2,2", "--device", "cpu", "--seed", "5",
    "--warmup-iterations", "2", "--joint-iterations", "2", "--finetune-iterations", "4", "--quiet",
    "--set", "base_channels=4", "--set", "local_window=16", "--set", "local_stride=8", "--set", "local_pool=4",
    "--set", "anco_queries=16", "--set", "anco_negatives=32", "--set", "saacl_anchors_per_class=16",
    "--set", "saacl_queue_size=256", "--set", "isd_queue_size=64", "--set", "geometric_augmentation=false",
    "--set", "log_every=1", "--set", "checkpoint_every=1000",
]
STOP_AFTER_POLLS = 6  # should_stop is polled before each iteration: 2 + 2 + 2 iterations, then stop
COMPARED = ("student", "teacher", "isd", "ft", "optimizer", "phase_index", "iteration")


def _env(dump: Path, stop_rank: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               ACTIONPP_TEST_DUMP=str(dump))
    if stop_rank is not None:
        env.update(ACTIONPP_TEST_STOP_RANK=str(stop_rank), ACTIONPP_TEST_STOP_AFTER=str(STOP_AFTER_POLLS))
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset, write_generic_layout

    root = tmp_path_factory.mktemp("ddp")
    data = write_generic_layout(cardiac_phantom_dataset(num_labeled=2, num_unlabeled=3, num_test=1, seed=3,
                                                        num_slices=3, size=(36, 36)), root / "data")
    out, dump = root / "run", root / "dump"
    dump.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "train", "--data", str(data), "--out", str(out), *TRAIN_ARGS]
    proc = _run(cmd, _env(dump, stop_rank=1))
    if (out / "checkpoint.pt").is_file():  # for the resume with as many processes
        (root / "run_resume2").mkdir()
        shutil.copy2(out / "checkpoint.pt", root / "run_resume2" / "checkpoint.pt")
    return {"root": root, "data": data, "out": out, "dump": dump, "proc": proc}


def _torchrun_module(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The documented command, unmodified: ``torchrun --nproc_per_node 2 -m ACTIONPlusPlusLib ...``."""
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "ACTIONPlusPlusLib", *args], env)


@pytest.fixture(scope="module")
def plain_run(ddp_run):
    out = ddp_run["root"] / "run_plain"
    proc = _torchrun_module(["train", "--data", str(ddp_run["data"]), "--out", str(out), *TRAIN_ARGS],
                            _env(ddp_run["root"] / "unused"))
    return {"out": out, "proc": proc}


def _tensors_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs between ranks"
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_torchrun_run_stops_together_and_checkpoints(ddp_run):
    proc = ddp_run["proc"]
    # the workers exit 130 ("interrupted, resume with --resume"); torchrun reports that as a failure and
    # may SIGTERM a worker that is still shutting down after the first one exited (the files are written
    # before any rank leaves ``train``)
    assert proc.returncode != 0 and "exitcode  : 130" in proc.stderr, \
        f"torchrun exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    # no worker traceback (torchrun itself prints one for its ChildFailedError)
    tracebacks = proc.stderr.count("Traceback (most recent call last)")
    assert tracebacks == int("ChildFailedError" in proc.stderr), proc.stderr[-6000:]
    assert proc.stderr.count("generic data: 2 labeled, 3 unlabeled, 2 processes") == 1  # rank 0 only
    assert proc.stderr.count("interrupted: checkpoint saved") <= 1
    starts = [json.loads((ddp_run["dump"] / f"stop_rank{r}.json").read_text()) for r in (0, 1)]
    # rank 1 alone asked to stop; both ranks stopped after fine-tuning iteration 2
    assert starts[0] == starts[1] == {"stopped": True, "phase_index": 2, "iteration": 2}


def test_all_ranks_hold_identical_state(ddp_run):
    states = [torch.load(ddp_run["dump"] / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in COMPARED:
        _tensors_equal(states[0][key], states[1][key], key)
    ft = states[0]["ft"]
    # the SAACL queue, centroids and allocation moved away from their initial values, and so did the ISD
    # queues: the comparison above is about updated state
    assert int(ft["saacl.queue.ptr"]) == (2 * 2 * 4 * 16) % 256  # 2 steps x 2 ranks x 4 classes x 16 anchors
    assert (ft["saacl.queue.labels"] >= 0).sum() == 2 * 2 * 4 * 16
    assert int(states[0]["isd"]["lat_queue.ptr"]) == (4 * 2 * 4) % 64  # 4 steps x 2 ranks x (2 + 2) samples
    assert sorted(ft["saacl.assignment"].tolist()) == [0, 1, 2, 3]
    # the ranks drew different batches: their sampling streams differ
    ckpt = torch.load(ddp_run["out"] / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    assert not torch.equal(ckpt["rank_rng"][0]["host_gen"], ckpt["rank_rng"][1]["host_gen"])
    for key in ("student", "teacher", "isd", "ft"):  # what rank 0 wrote is what every rank holds
        _tensors_equal(ckpt[key], states[1][key], f"checkpoint {key}")


def test_only_rank_zero_writes(ddp_run):
    dump, out = ddp_run["dump"], ddp_run["out"]
    assert not (dump / "writes_rank1.txt").exists(), (dump / "writes_rank1.txt").read_text()
    writes = (dump / "writes_rank0.txt").read_text().split()
    # after warm-up, after joint (+ the pre-training checkpoint), at the stop: one file each time
    assert [Path(w).name for w in writes] == ["checkpoint.pt", "checkpoint_pretrain.pt", "checkpoint.pt", "checkpoint.pt"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "checkpoint_pretrain.pt", "config.json"]


def test_resume_with_one_process_and_load_on_cpu(ddp_run):
    from ACTIONPlusPlusLib.inference import predict_case
    from ACTIONPlusPlusLib.model_io import load_model

    out, dump = ddp_run["out"], ddp_run["root"] / "dump_resume"
    dump.mkdir()
    # the checkpoint written under torchrun is a usable model on CPU
    model, cfg = load_model(out / "checkpoint.pt", device="cpu")
    assert cfg.base_channels == 4
    proc = _run([sys.executable, str(Path(__file__).resolve()), "train", "--data", str(ddp_run["data"]),
                 "--out", str(out), "--resume", *TRAIN_ARGS], _env(dump))
    assert proc.returncode == 0, f"resume exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    start = json.loads((dump / "start_rank0.json").read_text())
    assert start == {"phase_index": 2, "iteration": 2}  # continued from the torchrun checkpoint
    assert json.loads((dump / "stop_rank0.json").read_text())["stopped"] is False
    assert [Path(w).name for w in (dump / "writes_rank0.txt").read_text().split()] == ["checkpoint.pt", "model.pt"]
    final = torch.load(out / "checkpoint.pt", weights_only=True)
    assert final["phase"] == "done" and final["world_size"] == 1
    model, cfg = load_model(out / "model.pt", device="cpu")
    from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset

    case = cardiac_phantom_dataset(num_labeled=1, num_unlabeled=0, seed=9, num_slices=2, size=(36, 36)).labeled[0]
    result = predict_case(model, case, cfg, device="cpu")
    assert result.labels.shape == case.image.shape


def test_torchrun_module_command_trains_to_the_end(plain_run):
    """An uninterrupted ``torchrun ... -m ACTIONPlusPlusLib train``: model.pt (by rank 0) loads on CPU."""
    from ACTIONPlusPlusLib.model_io import load_model

    proc, out = plain_run["proc"], plain_run["out"]
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("model written to") == 1  # rank 0 only
    model, cfg = load_model(out / "model.pt", device="cpu")
    assert next(model.parameters()).device.type == "cpu" and cfg.base_channels == 4
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "done" and state["world_size"] == 2


def test_resume_with_as_many_processes_is_exact(ddp_run, plain_run):
    """Stopped at fine-tuning step 2 and resumed on 2 ranks = the uninterrupted run: each rank gets its own
    sampling streams back from the checkpoint (``rank_rng``).  BN running statistics are left out: the
    stop's checkpoint averaged them over the ranks, which the uninterrupted run did only at phase ends."""
    out = ddp_run["root"] / "run_resume2"
    proc = _torchrun_module(["train", "--data", str(ddp_run["data"]), "--out", str(out), "--resume", *TRAIN_ARGS],
                            _env(ddp_run["root"] / "unused"))
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)
    straight = torch.load(plain_run["out"] / "checkpoint.pt", weights_only=True)
    for key in ("student", "teacher", "isd", "ft"):
        keep = [k for k in straight[key] if not k.endswith(("running_mean", "running_var"))]
        _tensors_equal({k: resumed[key][k] for k in keep}, {k: straight[key][k] for k in keep}, key)


def test_masked_enqueue_of_more_rows_than_the_queue():
    """Anchors gathered from many ranks can outnumber the SAACL queue: written in order, like one by one."""
    from ACTIONPlusPlusLib.losses.instance import FeatureQueue

    g = torch.Generator().manual_seed(0)
    q = FeatureQueue(5, 3, init="zeros", with_labels=True)
    ref = FeatureQueue(5, 3, init="zeros", with_labels=True)
    x = torch.randn(13, 3, generator=g)
    labels = torch.arange(13)
    mask = torch.rand(13, generator=g) > 0.3
    q.enqueue(x, labels=labels, mask=mask)
    for i in range(13):
        if mask[i]:
            ref.enqueue(x[i : i + 1], labels=labels[i : i + 1])
    assert torch.equal(q.data, ref.data) and torch.equal(q.labels, ref.labels) and torch.equal(q.ptr, ref.ptr)


def test_helpers_are_identity_in_one_process(monkeypatch):
    from ACTIONPlusPlusLib import distributed as d

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert d.init_from_env("cpu") is False and not d.is_distributed()
    t = torch.arange(4.0)
    assert d.all_gather_cat(t) is t and d.any_rank(False) is False and d.all_gather_object(3) == [3]
    assert d.agreed(lambda: True)() is True
    assert d.local_device("cpu") == torch.device("cpu")


# --- the training script torchrun starts (and the single-process resume) -----------------------------------
def test_destroy_frees_the_ddp_wrapper_before_the_group(tmp_path):
    """``destroy`` collects the DDP wrapper's reference cycles while the interpreter is alive, before the
    group goes (left to shutdown, the gloo group's threads can abort a finished rank), and leaves no
    group behind.  A one-process gloo group, in this process."""
    import gc
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ACTIONPlusPlusLib import distributed as dist_utils

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gc.disable()  # only destroy may collect the cycle
        holder: dict = {"ddp": DistributedDataParallel(torch.nn.Linear(2, 2))}
        holder["self"] = holder  # a cycle, as the trainer's references to its wrapper are
        wrapper = weakref.ref(holder["ddp"])
        del holder
        assert wrapper() is not None
        dist_utils.destroy()
        assert wrapper() is None
        assert not dist_utils.is_distributed()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def _probe_and_train(argv: list[str]) -> int:
    """Run ``actionpp train`` with probes: per-rank state dump, file-write log, rank-selective stop."""
    from ACTIONPlusPlusLib import cli, model_io
    from ACTIONPlusPlusLib import distributed as dist_utils
    from ACTIONPlusPlusLib.training import loop

    dump = Path(os.environ["ACTIONPP_TEST_DUMP"])

    def log_write(path) -> None:
        with open(dump / f"writes_rank{dist_utils.rank()}.txt", "a") as f:
            f.write(f"{path}\n")

    original_run, original_save, original_model = loop.Trainer.run, loop.save_checkpoint, model_io.save_model

    def run(self, should_stop=None):
        r = dist_utils.rank()
        (dump / f"start_rank{r}.json").write_text(json.dumps({"phase_index": self.phase_index, "iteration": self.iteration}))
        stopped = original_run(self, should_stop)
        state = self.state_dict()
        torch.save({k: state[k] for k in COMPARED}, dump / f"rank{r}.pt")
        (dump / f"stop_rank{r}.json").write_text(json.dumps({"stopped": stopped, "phase_index": state["phase_index"],
                                                              "iteration": state["iteration"]}))
        return stopped

    def save_checkpoint(path, state):
        log_write(path)
        return original_save(path, state)

    def save_model(path, *a, **kw):
        log_write(path)
        return original_model(path, *a, **kw)

    loop.Trainer.run, loop.save_checkpoint, model_io.save_model = run, save_checkpoint, save_model
    stop_rank = os.environ.get("ACTIONPP_TEST_STOP_RANK")
    if stop_rank is not None:
        polls = [0]

        def should_stop(self) -> bool:
            polls[0] += 1
            return dist_utils.rank() == int(stop_rank) and polls[0] > int(os.environ["ACTIONPP_TEST_STOP_AFTER"])

        cli.StopFlag.__call__ = should_stop
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(_probe_and_train(sys.argv[1:]))
