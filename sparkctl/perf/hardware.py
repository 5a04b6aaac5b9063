"""Hardware presets: memory bandwidth, dense tensor-core peaks, the link TP uses,
and one calibration (bandwidth efficiency, fixed per-step overhead, compute
efficiency) per preset, the same for every model. Sources are named per preset;
docs/explain-calibration.md shows how the calibration does against measurements."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sparkctl.errors import InputError


@dataclass(frozen=True)
class Calibration:
    bw_efficiency: float  # share of peak memory bandwidth decode achieves
    step_overhead_ms: float  # per decode step: scheduling, sampling, launches, Python
    compute_efficiency: float  # share of the tensor-core peak GEMMs reach (prefill, big batches)
    basis: str


@dataclass(frozen=True)
class TensorPeaks:
    """Dense tensor-core peaks in TFLOPS; None where the chip has no such unit."""

    bf16: float
    fp8: float | None = None
    fp4: float | None = None

    def for_kind(self, kind: str) -> float:
        """The peak GEMMs of this kind run at, falling back to the next wider unit."""
        order = {"fp4": (self.fp4, self.fp8, self.bf16), "fp8": (self.fp8, self.bf16)}.get(kind, (self.bf16,))
        return next(p for p in order if p is not None)


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    mem_bw_gbs: float
    tflops: TensorPeaks
    memory_gb: float
    tp_across_nodes: bool  # TP>1 means more machines (a Spark has one GPU)
    allreduce_us: float  # small-message all-reduce latency between 2 TP ranks
    link_busbw_gbs: float  # large-message all-reduce bus bandwidth between TP ranks
    usable_memory_fraction: float  # what vLLM may take (GB10's memory is shared with the OS)
    calibration: Calibration
    source: str

    def peak_tflops(self, kind: str) -> float:
        return self.tflops.for_kind(kind)


# Bandwidth efficiency and fixed overhead are least-squares fits (on log error) to
# the single-request rows of docs/explain-calibration.md, one pair per platform;
# the batched rows are not fitted, they check the model. Compute efficiency: LMSYS
# measured 128 TFLOPS of FP8 prefill on a Spark, about 0.6 of its peak.
# Discrete GPUs with an x86 host (the A100, H100 and T4 rows), used for every discrete preset.
DISCRETE = Calibration(0.76, 0.5, 0.6, "fitted on the single-request A100-40GB, H100 and T4 rows (vLLM)")
# DGX Spark (the 13 single-request GB10 rows: vLLM and SGLang on one to four Sparks).
GB10 = Calibration(0.74, 4.5, 0.6, "fitted on the 13 single-request DGX Spark rows (vLLM, SGLang)")

# Default small-message all-reduce latency for a Spark pair over RoCE when no probe
# was saved: nccl-tests about 28 us at 8 KB on a healthy pair (shared/reference
# benchmarks.md 4.6), 18 us raw and 46 us inside a CUDA graph in a forum trace.
SPARK_PAIR_ALLREDUCE_US = 30.0

PRESETS: dict[str, Hardware] = {
    "gb10": Hardware(
        "gb10", "NVIDIA DGX Spark (GB10), one GPU per node, TP over ConnectX-7 RoCE", 273.0,
        TensorPeaks(213.0, fp8=214.0, fp4=427.0), 128.0, True, SPARK_PAIR_ALLREDUCE_US, 22.0, 0.85, GB10,
        "273 GB/s LPDDR5x (LMSYS DGX Spark review); dense peaks from ai-dynamo/aiconfigurator systems/gb10.yaml "
        "(FP8 does not double on SM12x); 22 GB/s all-reduce busbw on a healthy pair (sparkctl nccl-probe default)"),
    "h100": Hardware(
        "h100", "NVIDIA H100 SXM 80GB, TP over NVLink", 3350.0, TensorPeaks(989.0, fp8=1979.0), 80.0, False,
        8.0, 360.0, 0.9, DISCRETE, "NVIDIA H100 datasheet (SXM): 3.35 TB/s HBM3, dense BF16 989 / FP8 1979 TFLOPS"),
    "h200": Hardware(
        "h200", "NVIDIA H200 SXM 141GB, TP over NVLink", 4800.0, TensorPeaks(989.0, fp8=1979.0), 141.0, False,
        8.0, 360.0, 0.9, DISCRETE, "NVIDIA H200 datasheet: 4.8 TB/s HBM3e, same tensor cores as H100 SXM"),
    "a100-40gb": Hardware(
        "a100-40gb", "NVIDIA A100 SXM 40GB, TP over NVLink", 1555.0, TensorPeaks(312.0), 40.0, False,
        10.0, 230.0, 0.9, DISCRETE, "NVIDIA A100 datasheet: 1,555 GB/s HBM2, dense BF16 312 TFLOPS, no FP8"),
    "a100-80gb": Hardware(
        "a100-80gb", "NVIDIA A100 SXM 80GB, TP over NVLink", 2039.0, TensorPeaks(312.0), 80.0, False,
        10.0, 230.0, 0.9, DISCRETE, "NVIDIA A100 datasheet: 2,039 GB/s HBM2e (SXM), dense BF16 312 TFLOPS"),
    "l40s": Hardware(
        "l40s", "NVIDIA L40S 48GB, TP over PCIe", 864.0, TensorPeaks(362.0, fp8=733.0), 48.0, False,
        25.0, 20.0, 0.9, DISCRETE, "NVIDIA L40S datasheet: 864 GB/s GDDR6, dense BF16 362 / FP8 733 TFLOPS"),
    "rtx4090": Hardware(
        "rtx4090", "NVIDIA GeForce RTX 4090 24GB, TP over PCIe", 1008.0, TensorPeaks(165.0, fp8=330.0), 24.0, False,
        25.0, 20.0, 0.9, DISCRETE, "NVIDIA Ada whitepaper: 1,008 GB/s GDDR6X; dense FP16/BF16 165 (FP32 accumulate), FP8 330"),
    "rtx5090": Hardware(
        "rtx5090", "NVIDIA GeForce RTX 5090 32GB, TP over PCIe", 1792.0, TensorPeaks(209.0, fp8=419.0, fp4=838.0),
        32.0, False, 25.0, 40.0, 0.9, DISCRETE,
        "NVIDIA RTX Blackwell whitepaper: 1,792 GB/s GDDR7; dense BF16 209 / FP8 419 / FP4 838 (FP32 accumulate)"),
    "rtx-pro-6000": Hardware(
        "rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell 96GB, TP over PCIe", 1792.0,
        TensorPeaks(500.0, fp8=1000.0, fp4=2000.0), 96.0, False, 25.0, 40.0, 0.9, DISCRETE,
        "NVIDIA RTX PRO 6000 Blackwell datasheet: 1,792 GB/s GDDR7, 4 PFLOPS sparse FP4 (halved for dense, FP8 and BF16 "
        "halved again per step)"),
    "t4": Hardware(
        "t4", "NVIDIA T4 16GB, TP over PCIe", 320.0, TensorPeaks(65.0), 16.0, False, 30.0, 10.0, 0.9, DISCRETE,
        "NVIDIA T4 datasheet: 320 GB/s GDDR6, 65 TFLOPS FP16 (no BF16: vLLM runs FP16)"),
}


def hardware(name: str, *, mem_bw_gbs: float | None = None, tflops: float | None = None) -> Hardware:
    """A preset, with --mem-bw-gbs / --tflops overrides (tflops sets every compute kind)."""
    if name not in PRESETS:
        raise InputError(f"unknown hardware {name!r}", hint=f"use one of: {', '.join(PRESETS)}, "
                         "or the nearest one with --mem-bw-gbs and --tflops")
    preset = PRESETS[name]
    if mem_bw_gbs is not None:
        if mem_bw_gbs <= 0:
            raise InputError("--mem-bw-gbs must be positive")
        preset = replace(preset, mem_bw_gbs=mem_bw_gbs, source=preset.source + f"; memory bandwidth {mem_bw_gbs:g} GB/s from --mem-bw-gbs")
    if tflops is not None:
        if tflops <= 0:
            raise InputError("--tflops must be positive")
        peaks = preset.tflops
        preset = replace(preset, tflops=TensorPeaks(tflops, tflops if peaks.fp8 else None, tflops if peaks.fp4 else None),
                         source=preset.source + f"; {tflops:g} TFLOPS from --tflops")
    return preset
