"""Thin helpers over HF Accelerate and torchrun: one process, or several (DDP) on CPUs (gloo),
GPUs or nodes.

Two ways to run on several processes, the same code either way:

- under a launcher (`accelerate launch`, `torchrun`): every process runs the command,
  `accelerator()` joins them into one process group, and only the main process writes files;
- from one plain process: `run_tapt`, `fit` and `score_pool` given `num_processes` N > 1 start N
  workers with `launch` (torchrun on this machine), wait for them and read what they wrote.
  `after run --num-processes N` works this way: the loop stays one process (it alone writes the
  run's state) and each fine-tuning and scoring pass runs on N workers.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from after.errors import AfterError

JOB_FILE = "job.json"
_WORLD_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def mixed_precision(choice: str) -> str:
    """Accelerate's `mixed_precision` for a config's `precision`: "auto" is bf16 on a GPU that
    has it, fp16 on other GPUs, and full precision ("no") on a CPU."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def accelerator(precision: str) -> Any:
    """An `accelerate.Accelerator` for this process (CPU, one GPU, or one of several under a
    launcher: DDP over NCCL on GPUs, gloo on CPUs).

    - `cpu=True` where there is no GPU, so that torchrun's processes form a gloo group (Accelerate
      treats them as unrelated single processes otherwise).
    - `find_unused_parameters`: wav2vec 2.0's layer drop skips random layers in training, so
      some parameters get no gradient in some steps.
    - The scheduler steps once per optimiser step (`step_scheduler_with_optimizer=False`, and
      the loops call it only when they step): Accelerate's default steps it once per process,
      which would run the schedule N times too fast when the schedule counts optimiser steps.
    Gradient accumulation is done by the loops (`no_sync` on all but the last micro-batch of a
    step), since an epoch's last step may have fewer micro-batches.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        mixed_precision=mixed_precision(precision),
        cpu=not torch.cuda.is_available(),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


DEVICES = "auto, cpu, cuda or cuda:N"


def default_threads() -> int:
    """Torch's CPU threads in one process unless told otherwise: half the cores this process may
    run on, at least 1. Torch's own default (every core) stalls on shared machines: its threads
    spin waiting for each other while other jobs hold the cores (30 TAPT steps on 2 busy cores:
    37 s on 2 threads, 6.3 s on 1)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def use_compute(device: str = "auto", threads: int | None = None) -> None:
    """Apply `--device` and `--threads` to this process and to the workers it starts, before any
    model is built.

    device: "auto" (a GPU where torch sees one, else the CPU), "cpu" (hide the GPUs), "cuda"
    (require a GPU), "cuda:N" (only the N-th GPU visible). threads: torch's CPU threads per
    process (None: `default_threads()` here; workers started with `launch` share the cores).
    """
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise AfterError(f"--device {device!r}: give one of {DEVICES}")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # read when CUDA starts: the GPUs are hidden
    elif device.startswith("cuda:"):
        if world_size() > 1:
            raise AfterError(
                f"--device {device}: under a launcher each process takes its own GPU; leave "
                "--device out (or set CUDA_VISIBLE_DEVICES for the launcher)"
            )
        # Set before anything asks torch about GPUs: CUDA reads it once, when it starts.
        index = int(device.removeprefix("cuda:"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(index)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index] if index < len(ids) else "none"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AfterError(
            f"--device {device}: torch sees no such CUDA GPU (torch {torch.__version__}, CUDA "
            f"build: {torch.version.cuda or 'no'}); give a GPU that exists, install torch's CUDA "
            "build (README: Installing on a GPU machine), or use --device cpu"
        )
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the workers `launch` starts take it too
    torch.set_num_threads(threads or default_threads())


def world_size() -> int:
    """How many processes a launcher started for this job (1 when started plainly)."""
    for name in _WORLD_SIZE_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def state() -> Any:
    """Accelerate's `PartialState` (process index, count, device) without an `Accelerator`."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def must_launch(num_processes: int, what: str) -> bool:
    """True when `what` should start `num_processes` workers itself: more than one is asked for
    and this process was not started by a launcher. Under a launcher its process count is used;
    asking for a different count there is an error."""
    size = world_size()
    if size > 1:
        if num_processes not in (1, size):
            raise AfterError(
                f"{what}: started by a launcher with {size} processes but asked for "
                f"--num-processes {num_processes}; give one or the other"
            )
        return False
    return num_processes > 1


def launch(target: str, payload: dict[str, Any], num_processes: int, job_dir: Path) -> None:
    """Run `target(payload, job_dir)` ("module:function") on `num_processes` local workers
    (torchrun, one per GPU where there are GPUs, else gloo on CPUs) and wait for them.

    The job is written to `job_dir/job.json`; the function writes its results under `job_dir`.
    A user error (`AfterError`) in a worker is raised here with its message. On a CPU each worker
    gets an equal share of the cores (`OMP_NUM_THREADS`) unless that is set already. If this
    process dies, the workers are stopped (Linux).
    """
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise AfterError(
            f"--num-processes {num_processes}: this machine has {torch.cuda.device_count()} "
            "GPU(s); use at most one process per GPU"
        )
    job_dir.mkdir(parents=True, exist_ok=True)
    for old in job_dir.glob("error_*.txt"):
        old.unlink()
    (job_dir / JOB_FILE).write_text(json.dumps({"target": target, "payload": payload}))
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port on this machine: several jobs may run side by side
        f"--nproc-per-node={num_processes}",
        "-m",
        "after.dist",
        str(job_dir),
    ]
    try:
        proc = subprocess.run(cmd, env=env, preexec_fn=_death_signal(), check=False)
    except OSError as e:
        raise AfterError(f"cannot start worker processes ({e.strerror})") from e
    errors = sorted(job_dir.glob("error_*.txt"))
    if errors:
        raise AfterError(errors[0].read_text())
    if proc.returncode != 0:
        raise AfterError(
            f"{num_processes} worker processes failed (exit status {proc.returncode}); their "
            "messages are above"
        )


# Variables a launcher sets for its processes: a job launched from inside one must not inherit
# them (its torchrun sets its own).
_LAUNCHER_VARS = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ROLE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
    }
)


def _death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send SIGTERM to torchrun if its parent dies (kill -9
    included); torchrun then stops the workers. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@contextmanager
def job_folder(near: Path | None) -> Iterator[Path]:
    """A fresh folder for one launched job, removed afterwards: inside `near` when given (so
    large files stay on the same disk as the results), else in the system's temp folder."""
    if near is not None:
        near.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".job-", dir=near))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Worker entry point (`python -m after.dist JOB_DIR`, started by `launch`)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per process for loading the same weights
    job_dir = Path(argv[0])
    job = json.loads((job_dir / JOB_FILE).read_text())
    module, _, name = job["target"].partition(":")
    try:
        getattr(importlib.import_module(module), name)(job["payload"], job_dir)
    except AfterError as e:
        (job_dir / f"error_{os.environ.get('RANK', '0')}.txt").write_text(str(e))
        raise SystemExit(2) from None
    leave_process_group()


def leave_process_group() -> None:
    """After a launched run's work is done: wait for every process, then leave the process
    group, if this process joined one. A process that exits still in the group, possibly while
    the others still use it, can be aborted as it exits ("terminate called without an active
    exception" from the group's threads), failing a run that had finished its work. Only on
    success: a process whose peers failed mid-collective would wait here forever."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
