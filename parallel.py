"""Spreading a run's independent units of work over processes, starting those processes, and
`World`: what every stage of a run shares, this process's place among the processes included.

One process, or N of them started by `python train.py --processes N`, `accelerate launch` or
`torchrun`: accelerate over torch.distributed underneath (gloo on CPU, NCCL on GPUs). Every
unit of work draws its randomness from generators seeded by the unit's identity (`unit_seed`),
never from a stream that units share, so which process runs a unit does not change what it
draws. Process 0 writes the run directory and prints; the others compute and
hand their results to it.
"""
import datetime
import hashlib
import os
import random
import sys
import threading
import time
import uuid

import torch
import torch.distributed
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.utils import broadcast_object_list, gather_object
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from tqdm import tqdm

from config import Config
from models import adapter_state


def unit_seed(*identity) -> int:
    """A seed for one unit of work, e.g. (seed, "soar", step, dataset, copy)."""
    return int.from_bytes(hashlib.sha256(repr(identity).encode()).digest()[:8], "big") >> 1


def generators(*identity) -> tuple[torch.Generator, random.Random]:
    """The unit's own torch generator (sampling) and Python RNG (drawing questions)."""
    seed = unit_seed(*identity)
    return torch.Generator().manual_seed(seed), random.Random(seed)


class Processes:
    """This process's place among the run's processes, and the few collective calls the run
    makes. Every process must make the same calls in the same order (a collective that one
    process skips waits for it forever), so train.py makes them unconditionally."""

    def __init__(self):
        end_with_launcher()
        # A process can wait long at a collective (another one still trains a whole student).
        wait = InitProcessGroupKwargs(timeout=datetime.timedelta(hours=6))
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[wait])
        self.rank, self.count = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.rank == 0
        self.device = self.accelerator.device

    def map(self, fn, units: list) -> list:
        """[fn(u) for u in units], each process computing every count-th unit; every process
        gets the whole list, in the units' order."""
        mine = [(i, fn(units[i])) for i in range(self.rank, len(units), self.count)]
        done = dict(self.gather(mine))
        return [done[i] for i in range(len(units))]

    def owner(self, index: int) -> int:
        """The process that `map` gives unit `index` to."""
        return index % self.count

    def gather(self, items: list) -> list:
        """Every process's items, concatenated in process order, on every process."""
        return gather_object(items) if self.count > 1 else list(items)

    def broadcast(self, obj, src: int = 0):
        """`obj` as process `src` holds it, on every process."""
        return broadcast_object_list([obj], from_process=src)[0] if self.count > 1 else obj

    def on_main(self, fn):
        """fn() run by the main process alone (it reads or writes the run directory), its
        result on every process."""
        return self.broadcast(fn() if self.main else None)

    def main_first(self):
        """`with procs.main_first():` the main process of each machine runs the block first (a
        build or download), the others after it, from its cache."""
        return self.accelerator.local_main_process_first()

    def close(self) -> None:
        if self.count > 1:  # a process group left open makes the process abort at exit
            self.accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class World:
    """What every stage of a run shares: the config, the model, its tokenizer, the data, the
    adapters' untrained weights, and this process's place among the run's processes."""

    def __init__(self, cfg: Config, model, tokenizer, hard_train, hard_test, procs: Processes):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.hard_train, self.hard_test = hard_train, hard_test
        self.procs = procs
        self.fresh_student = adapter_state(model, "student")  # LoRA B = 0: the base model
        self.fresh_teacher = adapter_state(model, "teacher")
        self.log_external = lambda job, row: None  # set by main for --log

    def say(self, text: str) -> None:
        """Print once per run, from the main process."""
        if self.procs.main:
            tqdm.write(text)

    def bar(self, **kw):
        return tqdm(disable=not self.procs.main, dynamic_ncols=True, **kw)


def launch(processes: int, argv: list[str]) -> None:
    """Run this script on `processes` processes of this machine, with the same arguments.
    A process that fails ends the others, and this call raises with its error."""
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          run_id=uuid.uuid4().hex)
    os.environ[LAUNCHER] = str(os.getpid())
    elastic_launch(config, sys.executable)(os.path.abspath(sys.argv[0]), *argv)


LAUNCHER = "SOAR_LAUNCHER_PID"


def end_with_launcher() -> None:
    """In a process that `launch` started: exit when the launcher is gone. torch starts each
    process in a session of its own, so a launcher killed outright (SIGKILL) would otherwise leave
    them running, and writing, beside the run that resumes after it."""
    launcher = os.environ.get(LAUNCHER)
    if launcher is None:
        return

    def watch():
        while os.getppid() == int(launcher):
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def launched() -> bool:
    """True in a process that a launcher started (this one, accelerate's or torchrun)."""
    return "LOCAL_RANK" in os.environ
