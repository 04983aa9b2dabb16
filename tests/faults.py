"""Faults made real for tests, in the very calls the app makes: a full disk and a read-only folder (writes fail as
they do there, for root too, whom file permissions do not stop), and a GPU that runs out of memory."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tldr_core.model import Backbone


@contextmanager
def full_disk(room: int = 0) -> Iterator[None]:
    """No file of this process grows past `room` bytes meanwhile: RLIMIT_FSIZE, with SIGXFSZ ignored, makes such a
    write fail (EFBIG) where a full disk's fails (ENOSPC). Keep the block to the writes under test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Nothing can be made, renamed or removed in `folder` meanwhile: its permissions for a user, its immutable
    attribute (chattr +i) for root."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root where chattr +i is not allowed: no way to make a folder read-only")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def raise_cuda_out_of_memory(on_passes: set[int]):
    """What torch does when the GPU is full, at the point it does it: a backbone forward pass (the prefill is pass
    1) raises torch.cuda.OutOfMemoryError. A global forward pre-hook is the seam; remove() it afterwards."""
    passes = []

    def hook(module, inputs):
        if isinstance(module, Backbone):
            passes.append(module)
            if len(passes) in on_passes:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)
