"""The processes of one training run: rank, world size, device and CPU threads.

One process trains alone; under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1)
each process joins a process group (gloo on CPU, NCCL on CUDA) and, on CUDA, takes
the GPU of its ``LOCAL_RANK``. Rank 0 is the main process: it validates, logs and
writes the run folder.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from ..errors import ParamsError


#: How long a process waits at a collective (a barrier, the loss sum) for the others, in seconds, unless
#: ``VFNB_DIST_TIMEOUT_S`` says otherwise: a peer that stopped answering (stopped, hung, its machine gone)
#: ends the run with an error in bounded time instead of a hang; long enough for rank 0's validation and
#: checkpoint, which the others wait for at a barrier. A peer that dies is seen sooner: its sockets close and
#: torchrun stops the rest.
PROCESS_GROUP_TIMEOUT_S = 1800
TIMEOUT_VARIABLE = "VFNB_DIST_TIMEOUT_S"


def process_group_timeout() -> datetime.timedelta:
    """The collective timeout: :data:`PROCESS_GROUP_TIMEOUT_S`, or ``VFNB_DIST_TIMEOUT_S`` (seconds, > 0)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ParamsError(f"environment variable {TIMEOUT_VARIABLE}={text!r}: expected a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


class Processes:
    """Process-group facts for ``device_param`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); joins the group if needed."""

    def __init__(self, device_param: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self.device = self._device(device_param)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=process_group_timeout())
            self.owns_group = True
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self.distributed = self.world_size > 1

    def _device(self, device_param: str) -> torch.device:
        want_cuda = device_param.startswith("cuda") or (device_param == "auto" and torch.cuda.is_available())
        if not want_cuda:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ParamsError(f"parameter 'device' = {device_param!r} but no CUDA device is available")
        if self.world_size > 1:
            if self.local_rank >= torch.cuda.device_count():
                raise ParamsError(f"process with LOCAL_RANK {self.local_rank} but this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s): start at most that many "
                                  "processes per node (torchrun --nproc_per_node), or set device: cpu")
            device = torch.device("cuda", self.local_rank)
        elif device_param.startswith("cuda:"):
            device = torch.device(device_param)
        else:  # "cuda" / "auto": the current device, with its index (set_device refuses a bare "cuda")
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        return device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every process (in place)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 (or a single process), from the environment torchrun sets; usable before the group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def cpu_threads(threads, workers: int, world_size: int) -> int:
    """Torch threads per process: ``threads``, or with ``"auto"`` the cores left once each worker has one."""
    if threads != "auto":
        return int(threads)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world_size) - int(workers))


@contextlib.contextmanager
def training_processes(device_param: str, threads, workers: int):
    """:class:`Processes` for one run, with the CPU thread count set for its duration (and the group closed after)."""
    processes = Processes(device_param)
    threads_before = torch.get_num_threads()
    if processes.device.type == "cpu":
        # On a small CPU, OpenMP threads spinning against busy DataLoader workers can slow each
        # step many-fold; leave one core per worker.
        torch.set_num_threads(cpu_threads(threads, workers, processes.world_size))
    try:
        yield processes
    finally:
        torch.set_num_threads(threads_before)
        processes.close()
