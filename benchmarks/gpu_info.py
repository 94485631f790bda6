"""What the GPU benchmarks need to know about the card: its dense bf16 peak (for MFU) and its
utilisation over time (NVML).

The peaks are the vendors' dense (no sparsity) bf16 tensor-core figures, keyed by a piece
of the name `torch.cuda.get_device_name()` returns; the first piece found in the name wins,
so the more specific names come first ("H100 PCIe" before "H100", "L40S" before "L4").
"""

from __future__ import annotations

import threading
import time

# (piece of the CUDA device name, dense bf16 TFLOP/s)
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),        # "NVIDIA H100 80GB HBM3" (SXM)
    ("GH200", 989.4),
    ("H200 NVL", 835.0),
    ("H200", 989.4),        # "NVIDIA H200" (SXM)
    ("B200", 2250.0),
    ("A100", 312.0),        # SXM and PCIe alike
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),    # bf16 with fp32 accumulation
    ("RTX 6000 Ada", 364.2),
    ("RTX A6000", 154.8),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None when the table does not know it."""
    for piece, tflops in BF16_PEAK_TFLOPS:
        if piece.lower() in device_name.lower():
            return tflops
    return None


class UtilisationSampler:
    """GPU utilisation (percent of time a kernel ran) and memory use, sampled with NVML
    from a thread every `interval` seconds between `start()` and `stop()`. Where NVML is
    missing (no `nvidia-ml-py`, or no driver) `error` says why and nothing is sampled."""

    def __init__(self, index: int = 0, interval: float = 0.2):
        self.index, self.interval = index, interval
        self.util: list[float] = []
        self.memory_gb: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml
        except ImportError:
            self.error = "pynvml not importable (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as e:
            self.error = f"NVML unavailable: {e}"
            return
        self._nvml = pynvml

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.util.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                self.memory_gb.append(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30)
            except self._nvml.NVMLError as e:  # a driver hiccup ends sampling, not the run
                self.error = f"NVML stopped answering: {e}"
                return
            time.sleep(self.interval)

    def start(self) -> "UtilisationSampler":
        if self.error is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict:
        """`name: value` pairs: mean and max utilisation, peak memory, or why there are none."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.util:
            return {"gpu_util": f"not sampled ({self.error or 'no samples'})"}
        return {"gpu_util_mean_pct": sum(self.util) / len(self.util),
                "gpu_util_max_pct": max(self.util), "gpu_util_samples": len(self.util),
                "gpu_memory_used_max_gb": max(self.memory_gb)}
