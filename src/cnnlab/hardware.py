"""The machine a run lands on: which device, which number format it computes fast, how many threads, determinism.

Every choice made for the user is returned with its reason, so the run log and summary.json can say it.
"""

import os
from dataclasses import dataclass

import torch

from cnnlab.errors import CnnlabError

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA, else Apple's MPS, else the CPU; a device asked for but absent is one clear line."""
    if name not in DEVICES:
        raise CnnlabError(f"--device {name!r} is not allowed; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name == "mps" and not mps_available():
        raise CnnlabError("--device mps was asked for, but PyTorch sees no Apple GPU (MPS); use --device cpu or auto")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN itself decides; elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return _cpu_flags() & {"avx512_bf16", "amx_bf16"} != set()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """Loss scaling for fp16, whose narrow range lets small gradients underflow; off otherwise."""
        return torch.amp.GradScaler(device.type, enabled=self.name == "fp16")


def resolve_precision(asked: str, device: torch.device, convolutional: bool = True) -> Precision:
    """The number format to train in: what was asked, or for `auto` the fastest this device computes natively.

    `auto` keeps models without convolutions (linear and softmax regression, MLPs) in fp32: they are small, so
    fp32 costs little, and bf16's 8-bit mantissa would keep linear regression from recovering w to 1e-2.
    """
    if asked == "auto" and not convolutional:
        return Precision("fp32", "a model without convolutions: fp32 costs little and keeps its numbers exact")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        capability = "%d.%d" % torch.cuda.get_device_capability(device)
        has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if asked == "bf16" and not has_bf16:
            raise CnnlabError(f"this GPU ({name}, compute capability {capability}) has no bf16; use --precision "
                              "fp16 (or auto, which picks it)")
        if asked == "auto":
            return (Precision("bf16", f"{name} (compute capability {capability}) computes bf16 natively")
                    if has_bf16 else
                    Precision("fp16", f"{name} (compute capability {capability}) has no bf16: fp16 autocast with "
                                      "loss scaling"))
        return Precision(asked, "asked for")
    if device.type == "cpu" and asked == "auto":
        if cpu_has_bf16():
            return Precision("bf16", "this CPU computes bf16 natively: AVX512-BF16 or AMX")
        return Precision("fp32", "this CPU has no native bf16, and emulated bf16 is slower than fp32")
    if asked == "auto":  # MPS: mixed precision is not verified on Apple GPUs here, so the safe choice
        return Precision("fp32", f"{device.type}: fp32 (try --precision fp16 or bf16)")
    if device.type == "cpu" and asked == "bf16" and not cpu_has_bf16():
        return Precision("bf16", "asked for; this CPU emulates bf16, which is slower than fp32")
    return Precision(asked, "asked for")


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """PyTorch's intra-op threads: `threads`, else $OMP_NUM_THREADS when the user set it, else every usable core.
    Returns the number in force."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()  # torch read it at start-up
    torch.set_num_threads(threads or usable_cores())
    return torch.get_num_threads()


# glibc's malloc hands blocks of ≥ 128 KB-32 MB to the kernel on free (mmap/munmap, and trimming the heap's top), so a
# CPU training step that allocates the same activations every step page-faults them in afresh, the kernel zeroing
# each page: on the 2-core Xeon here ResNet-18 trained 1.44× faster at 64² and 1.10× at 32² when freed blocks stayed
# for reuse (benchmarks/cpu_memory.py; BENCHMARKS.md) — what jemalloc or tcmalloc do, which Intel recommends for
# PyTorch on CPUs, without installing either. 1 GiB: larger blocks still go back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 1 << 30
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def reuse_freed_memory() -> str | None:
    """Keep the process's freed memory for reuse instead of returning it to the kernel (glibc's mallopt), unless
    the user chose an allocator or its settings ($LD_PRELOAD, glibc's $MALLOC_*_ / $GLIBC_TUNABLES) or set
    $CNNLAB_REUSE_MEMORY=0. Returns what it did, for the run log; None where it did nothing (other C libraries,
    macOS, Windows). Forked DataLoader workers inherit it. The process's memory then stays at its peak."""
    if os.environ.get("CNNLAB_REUSE_MEMORY", "1") == "0" or any(os.environ.get(v) for v in _MALLOC_SETTINGS):
        return None
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        done = libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED) and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)
    except (OSError, AttributeError):
        return None
    return "freed memory kept for reuse (glibc mallopt)" if done else None


def set_deterministic(on: bool, autotune: bool = False) -> None:
    """Deterministic kernels, so two runs of one seed agree to the bit; cuBLAS needs its workspace fixed for that,
    before it starts. Off leaves PyTorch's defaults. cuDNN autotuning (`autotune`, never with `on`) timed each new
    shape's algorithms for 9 s of a 4-epoch ResNet-18 run on an H100 and then ran no faster than its heuristics."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = autotune and not on and torch.cuda.is_available()
