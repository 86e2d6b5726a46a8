"""Multi-process runs (`accelerate launch`): who writes run files, and how a global batch splits over processes."""

from __future__ import annotations

import os


def process_info() -> tuple[int, bool]:
    """(number of processes, whether this is the main process); 1 and True outside a distributed launch.

    Read from the launcher's environment (WORLD_SIZE, RANK: set by `accelerate launch` and `torchrun`) rather than
    by creating accelerate's shared state early, which would fix the backend before the Trainer chooses it."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


def per_process(global_batch: int, num_processes: int, what: str) -> int:
    """The per-process share of a global batch; the same global batch gives the same optimiser steps anywhere."""
    if global_batch % num_processes:
        raise ValueError(f"{what}={global_batch} does not split evenly over {num_processes} processes; "
                         f"choose a multiple of {num_processes}.")
    return global_batch // num_processes
