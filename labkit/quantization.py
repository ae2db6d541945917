"""Quantisation made visible: NF4 with bitsandbytes' own functions, on the CPU.

    levels = nf4_levels()                          # the 16 values a 4-bit NF4 weight can take
    rt = round_trip(weight, blocksize=64)          # quantise + dequantise, error per block
    double_quant_bytes(n_params)                   # what double quantisation saves
    footprints()                                   # the real model in fp32, bf16, int8, NF4

NF4 (QLoRA, Dettmers et al. 2023, arXiv:2305.14314) cuts a weight matrix into blocks of 64
values, divides each block by its largest absolute value (absmax), and rounds each result to the
nearest of 16 levels placed at quantiles of a normal distribution. Storing one fp32 absmax per
64 weights costs 32/64 = 0.5 bits per weight; double quantisation stores the absmaxes themselves
in 8 bits (with one fp32 constant per 256 of them): 8/64 + 32/(64*256) = 0.127 bits per weight.
"""
from __future__ import annotations

import time

import torch

from .plots import LabFigure, lab_layout

BLOCKSIZE = 64


def _bnb():
    import bitsandbytes.functional as F

    return F


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 code values in [-1, 1], as bitsandbytes defines them."""
    return _bnb().get_4bit_type("nf4", device="cpu").float()


def quantize(weight: torch.Tensor, blocksize: int = BLOCKSIZE, double_quant: bool = False):
    """bitsandbytes' ``quantize_4bit`` (NF4): returns ``(packed uint8, QuantState)``."""
    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"blocksize={blocksize!r}: bitsandbytes takes a power of two from 32 to 4096")
    w = weight.detach().float().contiguous().cpu()
    return _bnb().quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")


def dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    return _bnb().dequantize_4bit(packed, state).float()


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit code (0-15) of every weight: two per byte, high nibble first."""
    b = packed.flatten()
    return torch.stack([b >> 4, b & 0x0F], dim=1).flatten().long()


def round_trip(weight: torch.Tensor, blocksize: int = BLOCKSIZE, double_quant: bool = False) -> dict:
    """Quantise and dequantise ``weight``. Returns the dequantised tensor, the codes, each
    block's absmax and the per-block error (a DataFrame: block, absmax, mean/max abs error)."""
    import pandas as pd

    w = weight.detach().float().cpu()
    packed, state = quantize(w, blocksize, double_quant)
    back = dequantize(packed, state).reshape(w.shape)
    err = (back - w).abs().flatten()
    n_blocks = -(-w.numel() // blocksize)
    pad = n_blocks * blocksize - w.numel()
    blocks_w = torch.nn.functional.pad(w.flatten(), (0, pad)).reshape(n_blocks, blocksize)
    blocks_e = torch.nn.functional.pad(err, (0, pad)).reshape(n_blocks, blocksize)
    absmax = blocks_w.abs().amax(dim=1)
    table = pd.DataFrame({"block": range(n_blocks), "absmax": absmax.numpy(),
                          "mean_abs_error": (blocks_e.sum(1) / blocksize).numpy(),
                          "max_abs_error": blocks_e.amax(1).numpy()})
    table["relative_error"] = table["mean_abs_error"] / blocks_w.abs().mean(1).clamp_min(1e-12).numpy()
    return {"weight": w, "dequantized": back, "codes": unpack_codes(packed)[:w.numel()],
            "state": state, "packed": packed, "blocks": table,
            "bytes": quantized_bytes(packed, state)}


def quantized_bytes(packed: torch.Tensor, state) -> dict:
    """Bytes of the packed 4-bit weights and of the quantisation constants in a ``QuantState``."""
    stats = state.absmax.numel() * state.absmax.element_size()
    if getattr(state, "nested", False) and state.state2 is not None:
        s2 = state.state2
        stats += s2.absmax.numel() * s2.absmax.element_size() + 4  # + the fp32 offset (the code table is shared)
    return {"weights": packed.numel() * packed.element_size(), "constants": stats}


def double_quant_bytes(n_params: int, blocksize: int = BLOCKSIZE, blocksize2: int = 256) -> dict:
    """Bytes of quantisation constants for ``n_params`` weights without and with double
    quantisation (the formula in the module docstring)."""
    blocks = -(-n_params // blocksize)
    single = blocks * 4
    double = blocks * 1 + (-(-blocks // blocksize2)) * 4 + 4  # + one fp32 offset
    return {"blocks": blocks, "constants_fp32": single, "constants_double_quant": double,
            "saving_bytes": single - double,
            "bits_per_weight_fp32": 8 * single / n_params, "bits_per_weight_double_quant": 8 * double / n_params}


def weight_histogram(weight: torch.Tensor, blocksize: int = BLOCKSIZE, title: str | None = None):
    """Histogram of the weights after block-wise absmax scaling, with the 16 NF4 levels drawn
    over it: every scaled weight is rounded to the nearest line."""

    w = weight.detach().float().flatten().cpu()
    w = w[: (w.numel() // blocksize) * blocksize].reshape(-1, blocksize)
    scaled = (w / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten()
    fig = LabFigure()
    fig.add_histogram(x=scaled.numpy(), nbinsx=200, name="weights / block absmax",
                      marker_color="#7f7f7f", histnorm="probability")
    for i, level in enumerate(nf4_levels().tolist()):
        fig.add_vline(x=level, line=dict(color="#2ca02c", width=1.5))
    fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color="#2ca02c"), name="the 16 NF4 levels")
    return lab_layout(fig, 360, legend_below=-0.25,
                      title=title or "Scaled weights crowd near zero, where NF4 puts most of its levels",
                      xaxis_title="weight / absmax of its block of %d" % blocksize, yaxis_title="share of weights")


def model_bytes(model) -> int:
    """Bytes the weights take as stored, including bitsandbytes' quantisation constants (they
    hang off the weight objects, not among the parameters)."""
    from .models import footprint_bytes

    total = footprint_bytes(model)
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += quantized_bytes(p.data, state)["constants"]
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def footprints(name: str | None = None, formats=("fp32", "bf16", "int8", "nf4")):
    """Load the model in each format and measure its weights' bytes (a DataFrame)."""
    import pandas as pd

    from .models import OFFLINE_MODEL, count_parameters, load_model

    load = {"fp32": dict(dtype="float32"), "bf16": dict(dtype="bfloat16"),
            "int8": dict(quantization="8bit"), "nf4": dict(quantization="4bit")}
    rows = []
    for fmt in formats:
        if fmt not in load:
            raise ValueError(f"format {fmt!r}: choose from {sorted(load)}")
        t = time.perf_counter()
        model, _ = load_model(name or OFFLINE_MODEL, device="cpu", **load[fmt])
        rows.append({"format": fmt, "parameters": count_parameters(model),
                     "MiB": model_bytes(model) / 2**20, "load_s": time.perf_counter() - t})
        del model
    df = pd.DataFrame(rows)
    df["bits_per_parameter"] = df["MiB"] * 2**20 * 8 / df["parameters"]
    return df
