"""Process-group setup and the few collectives the trainer needs, plus `print0`, the one rank-0 output helper.

Three ways to start are supported and all end in a torch.distributed process group initialised by DeepSpeed:
- `deepspeed --num_gpus N launcher/train.py ...`: the launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*;
- `mpirun -np N python launcher/train.py ...`: DeepSpeed discovers the ranks through mpi4py;
- `python launcher/train.py ...`: one process; we set the env:// variables ourselves so no MPI singleton is needed.
"""

from __future__ import annotations

import os
import socket
import warnings

import torch

# Environment variables that reveal an MPI launch before any MPI call (OpenMPI, MPICH/Hydra, Intel MPI, Slurm PMI).
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def launch_world_size() -> int:
    """World size as the launcher announced it, readable before the process group exists (for early checks)."""
    for name in ("WORLD_SIZE", *_MPI_SIZE_VARS):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def launch_rank() -> int:
    for name in ("RANK", *_MPI_RANK_VARS):
        if os.environ.get(name):
            return int(os.environ[name])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_shm_inference_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory allreduce op, which training never calls.

    DeepSpeed 0.19.8 (deepspeed/comm/torch.py, `TorchBackend.__init__` -> `build_shm_op`) JIT-compiles
    `deepspeed_shm_comm` with ninja on the first CPU launch of every virtualenv path (torch's extension cache keys
    the build on the include paths): about a minute on an idle 2-core machine, several under load, on every rank's
    critical path, and a stale `lock` file if the build is killed makes the next launch wait forever. The op serves
    only `inference_all_reduce` (tensor-parallel inference layers in deepspeed/module_inject/layers.py); `all_reduce`
    goes to torch.distributed (gloo) either way. `build_shm_op` skips the build when the op is not in
    `deepspeed.ops.__compatible_ops__`, so mark it so. Its bare "... built successfully" print goes with it.
    """
    import deepspeed.ops

    try:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except (AttributeError, TypeError):  # another DeepSpeed layout: the op just gets built, as before
        pass


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, the accelerator's backend elsewhere)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ and not any(os.environ.get(v) for v in _MPI_SIZE_VARS):
        # Plain `python launcher/train.py`: a one-process group over env://, without asking MPI.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "gloo" if get_accelerator().device_name() == "cpu" else None
    if backend == "gloo":
        _skip_shm_inference_op()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, verbose=False)
    # ZeRO-2 in DeepSpeed 0.19.8 gathers partitions with torch.distributed.all_gather_into_tensor, which torch 2.13
    # deprecates with a FutureWarning on every rank. The call is DeepSpeed's, not ours, and nothing we can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else launch_rank()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else launch_world_size()


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only (flushed, so lines from a launcher's pipe appear as they happen)."""
    if rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def comm_device() -> torch.device:
    """Device for collective tensors: gloo reduces CPU tensors, NCCL needs them on the GPU."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """All-reduce a short list of floats (float64) in one collective; identity without a process group."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    torch.distributed.all_reduce(t, op={"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
                                        "min": torch.distributed.ReduceOp.MIN}[op])
    return t.cpu().tolist()


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a small device tensor as float64 on the collective's device, without reading it on the host: the
    caller decides when to read (docs/DESIGN.md, "The GPU never waits on the host"). Identity without a process
    group."""
    t = t.to(device=comm_device() if is_initialized() else t.device, dtype=torch.float64)
    if is_initialized():
        torch.distributed.all_reduce(t, op={"sum": torch.distributed.ReduceOp.SUM,
                                            "max": torch.distributed.ReduceOp.MAX,
                                            "min": torch.distributed.ReduceOp.MIN}[op])
    return t


def all_gather_object(obj):
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    """End a run that succeeded: wait for every rank, then destroy the process group while Python is fully alive.

    Without it, gloo's worker threads can still hold work objects at interpreter exit, and a rank that finished cleanly
    dies with SIGABRT ("terminate called without an active exception"; pytorch/pytorch#190489 and #179291), which the
    deepspeed launcher reports as a failed job. torch's docs ask for this call near the end of main().
    """
    if is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# What gloo and NCCL say when the other side of a collective went away (torch's DistNetworkError / DistBackendError
# for NCCL; a RuntimeError from gloo's tcp pair, "Connection closed by peer ... remote worker crashing").
_PEER_GONE = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer",
              "NCCL communicator was aborted", "Broken pipe")


def _peer_failure(error: BaseException) -> bool:
    dist_errors = tuple(getattr(torch.distributed, n) for n in ("DistNetworkError", "DistBackendError")
                        if hasattr(torch.distributed, n))
    return (dist_errors and isinstance(error, dist_errors)) or any(s in str(error) for s in _PEER_GONE)


def abort_job(error: BaseException) -> None:
    """This rank failed on its own: report it and end the whole job now, never returning.

    A normal exit would hang the job: the other ranks wait in a collective for this one (gloo and NCCL wait ~30 min by
    default), and under `mpirun` this rank's own MPI_Finalize at exit waits for theirs, so nothing ever ends (seen:
    a data read error on rank 1 of 2 under mpirun hung both ranks). The deepspeed launcher kills the other ranks when
    one exits non-zero (deepspeed 0.19.8 launcher/launch.py, sigkill_handler); under mpirun, MPI_Abort does.
    """
    import sys
    import time
    import traceback

    prefix = f"rank {rank()} of {world_size()}: "
    if isinstance(error, SystemExit):
        message = prefix + str(error) + "\n"
    elif _peer_failure(error):
        # A collective broke because another rank ended (its own message says why): one line here, not the
        # collective's traceback through DeepSpeed and torch, which would bury that message.
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        message = prefix + f"stopped: a collective failed because another rank ended (see its message); {first}\n"
    else:
        message = prefix + "".join(traceback.format_exception(error))
    # One write, newline included: print() writes the text and its newline separately, and every rank shares the
    # launcher's stderr, so another rank's line could land between the two (seen: two ranks' lines run together).
    sys.stderr.write(message)
    sys.stdout.flush()
    sys.stderr.flush()
    # The launcher forwards our output asynchronously (mpirun's proxies, the deepspeed launcher's pipes); an abort
    # at once can tear that down before the message above reaches the user (seen under mpirun).
    time.sleep(2.0)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.COMM_WORLD.Abort(1)
    os._exit(1)
