"""Memory a training run itself needs, measured the same way for every method.

On CUDA the allocator keeps a peak (`max_memory_allocated`), reset before each run. The CPU allocator keeps
none, and a process's peak RSS mixes in everything the process did before (and, in a worker that trains
many runs, every earlier run). So on the CPU a `TensorPeak` watches tensor storages being created (a torch
dispatch mode) and freed (weak references): the peak of live tensor bytes, counted from the model weights
already in memory. The mode costs about 2x per op, so it watches only the first `probe_steps` optimizer
steps: from the second step on, every step allocates exactly what the one before it did (same shapes,
optimizer state already there), so the peak is reached by then.

Beside it, the process's own peak RSS is recorded too, reset per run where Linux allows it.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


def module_storages(*modules: torch.nn.Module) -> list:
    """The distinct parameter and buffer storages of these modules."""
    seen: dict[int, object] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            s = t.untyped_storage()
            # By the storage itself (not its data_ptr: every fake tensor of mode=estimate has data_ptr 0).
            seen.setdefault(s._cdata, s)
    return list(seen.values())


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct parameter and buffer storages of these modules."""
    return sum(s.nbytes() for s in module_storages(*modules))


class _Watch(TorchDispatchMode):
    def __init__(self, owner: "TensorPeak") -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type in self.owner.device_types:
                self.owner._track(t.untyped_storage())
        return out


class TensorPeak:
    """Peak bytes of live tensors (CPU ones by default) while active: `baseline_bytes` (what was already live and is needed,
    e.g. the model weights) plus the peak of what was allocated since `start()`. `known` storages (those
    weights) are in the baseline already: an op that returns a view of one allocates nothing."""

    def __init__(self, baseline_bytes: int = 0, known=(), device_types: tuple[str, ...] = ("cpu",)) -> None:
        # device_types: whose tensors count. mode=estimate runs on fake tensors, the model's on "meta"
        # (standing for the accelerator) beside host tensors on "cpu".
        self.device_types = tuple(device_types)
        self.baseline_bytes = int(baseline_bytes)
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        for storage in known:
            self._seen[storage] = 0
            # A known weight freed while watched (e.g. a half-precision weight replaced by its fp32 master
            # copy) leaves the baseline: it no longer needs memory.
            weakref.finalize(storage, self._freed, storage.nbytes())
        self._mode: _Watch | None = None

    def _track(self, storage) -> None:
        if storage in self._seen:
            return
        n = storage.nbytes()
        self._seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, n)

    def _freed(self, n: int) -> None:
        self.live -= n

    def start(self) -> None:
        self._mode = _Watch(self)
        self._mode.__enter__()

    def stop(self) -> None:
        """Stop watching (idempotent); frees of watched tensors still count, so `live` stays right."""
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    @property
    def watching(self) -> bool:
        return self._mode is not None

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.peak


def reset_process_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux `clear_refs` 5); False where the OS does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM) since start or the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def available_bytes(device: torch.device) -> int | None:
    """Memory a new training could still take on `device`: free memory on a CUDA device; on the CPU the
    kernel's MemAvailable, capped by this container's cgroup limit when one is set (psutil sees the host)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    import psutil

    free = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            free = min(free, int(limit) - int(usage))
        break
    return free
