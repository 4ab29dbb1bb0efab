"""How a process that times a model keeps its memory: one policy for the workers that run the parts and for the
profiler that predicts them, so that a profile is measured under the allocator the parts will compute under.

Under glibc's default policy an activation larger than the mmap threshold is a fresh mmap whose pages fault in
again on every inference, and the heap's top is trimmed back to the OS after each. Measured here on VGG-16 (one
thread, 224x224): 349-351 ms a forward pass with activations resident, 390-400 ms under the default policy and
453-480 ms with the workers' start-up threshold of 64 KiB, which they keep low until the model is built so that
freed weights go back to the OS and their peak RSS stays honest.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("splitbench")

# glibc's mallopt parameters, and its largest mmap threshold on 64-bit.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def keep_activations_resident() -> bool:
    """From now on freed activations stay in the heap for the next inference: the mmap threshold at its largest
    and no trimming, for the rest of the process. False where the C library has no ``mallopt`` (not glibc): its
    allocator's own policy stands."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        log.info("mallopt unavailable: activations' memory is left to the allocator")
        return False
    return True


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside: tensors are freed by reference counting, the collector only adds pauses. It
    collects once when the block is done."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()
        gc.collect()
