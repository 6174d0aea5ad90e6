"""Peak dense FLOP/s of one device, the denominator of model FLOP utilisation (MFU).

Accelerators: the vendor's datasheet figure for dense matmuls (no structured sparsity) in the
computation dtype, keyed by `jax.devices()[0].device_kind`. float32 matmuls run at JAX's
default precision, which is not full float32 on accelerators: TF32 tensor cores on NVIDIA
Ampere and later, one bfloat16 pass of the MXU on TPU, so those are the float32 figures.
CPU: no datasheet applies, so the peak is this machine's measured float32 matmul rate
(`measured_matmul_flops`), and the MFU says how close the step comes to the machine's own
best matmul.
"""

from __future__ import annotations

import re
import time

# (device_kind pattern, name, bfloat16 FLOP/s, float32 FLOP/s at JAX's default precision),
# first match wins (re.search). Sources, dense figures (the datasheets' sparsity figures are
# twice these):
#   NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe): BF16 312 TFLOPS, TF32 156.
#   NVIDIA H100 Tensor Core GPU datasheet: H100 SXM BF16 989 TFLOPS, TF32 495; H100 PCIe
#     BF16 756, TF32 378; H100 NVL BF16 835, TF32 418.
#   NVIDIA H200 Tensor Core GPU datasheet: H200 SXM BF16 989 TFLOPS, TF32 495 (GH200: the
#     same H100-class GPU, GH200 Grace Hopper Superchip datasheet); H200 NVL BF16 835, TF32 418.
#   NVIDIA L4 Tensor Core GPU datasheet: BF16 121 TFLOPS, TF32 60.
#   Google Cloud TPU documentation, system architecture pages (per chip, which is one JAX
#     device from v4 on): v4 275 TFLOPS BF16, v5e 197, v5p 459, v6e (Trillium) 918.
TERA = 1e12
PEAKS: tuple[tuple[str, str, float, float], ...] = (
    (r"GH200", "NVIDIA GH200", 989 * TERA, 495 * TERA),
    (r"H200 NVL", "NVIDIA H200 NVL", 835 * TERA, 418 * TERA),
    (r"H200", "NVIDIA H200 SXM", 989 * TERA, 495 * TERA),
    (r"H100 NVL", "NVIDIA H100 NVL", 835 * TERA, 418 * TERA),
    (r"H100 PCIe", "NVIDIA H100 PCIe", 756 * TERA, 378 * TERA),
    (r"H100", "NVIDIA H100 SXM", 989 * TERA, 495 * TERA),
    (r"A100", "NVIDIA A100", 312 * TERA, 156 * TERA),
    (r"\bL4\b", "NVIDIA L4", 121 * TERA, 60 * TERA),
    (r"^TPU v4$", "TPU v4", 275 * TERA, 275 * TERA),
    (r"^TPU v5 ?lite$|^TPU v5e$", "TPU v5e", 197 * TERA, 197 * TERA),
    (r"^TPU v5p?$", "TPU v5p", 459 * TERA, 459 * TERA),
    (r"^TPU v6 ?lite$|^TPU v6e$", "TPU v6e", 918 * TERA, 918 * TERA),
)

# The CPU's reference matmul: ViT-B's MLP input projection for 4096 tokens (a 64 x 64 grid).
CPU_MATMUL_SHAPE = (4096, 768, 3072)


def datasheet_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
    """(FLOP/s, where it comes from) for a known accelerator; None for any other device."""
    for pattern, name, bfloat16, float32 in PEAKS:
        if re.search(pattern, device_kind):
            peak = bfloat16 if dtype == "bfloat16" else float32
            return peak, f"{name} datasheet, dense {dtype}"
    return None


def measured_matmul_flops(repeats: int = 5) -> float:
    """This device's float32 matmul rate: a jitted [4096, 768] @ [768, 3072] product, the best
    of `repeats` timed calls after a compile-and-warm-up call (best, not median: the least
    disturbed by other load on a shared machine)."""
    import jax
    import jax.numpy as jnp

    m, k, n = CPU_MATMUL_SHAPE
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (m, k), jnp.float32)
    b = jax.random.normal(keys[1], (k, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def peak_flops(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of jax.devices()[0] for matmuls in `dtype`, a note saying where it comes
    from): the datasheet's figure, else (CPUs, unlisted accelerators) the measured float32
    matmul rate."""
    import jax

    device_kind = jax.devices()[0].device_kind
    known = datasheet_peak(device_kind, dtype)
    if known is not None:
        return known
    m, k, n = CPU_MATMUL_SHAPE
    return measured_matmul_flops(), (
        f"measured on this {device_kind}: float32 matmul [{m}, {k}] @ [{k}, {n}], best of 5 "
        "(no datasheet figure)"
    )
