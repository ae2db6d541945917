"""NF4 through bitsandbytes' own functions: levels, block-wise absmax, round trip, double quantisation."""
import pytest
import torch

from labkit import quantization as q


def test_nf4_has_16_levels_from_minus_one_to_one():
    levels = q.nf4_levels()
    assert levels.numel() == 16 and levels[0] == -1 and levels[-1] == 1
    assert torch.all(levels[1:] > levels[:-1]) and (levels == 0).any()
    gaps = levels[1:] - levels[:-1]
    assert gaps[7] < gaps[0]  # levels crowd near zero, where normal weights are


def test_round_trip_is_level_times_block_absmax():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * 0.02
    rt = q.round_trip(w, blocksize=64)
    absmax = torch.tensor(rt["blocks"]["absmax"].values)
    rebuilt = q.nf4_levels()[rt["codes"]].reshape(-1, 64) * absmax[:, None]
    assert torch.allclose(rebuilt.flatten(), rt["dequantized"].flatten(), atol=1e-7)
    assert len(rt["blocks"]) == 32
    # each value is rounded to the nearest level: error at most half the widest gap times absmax
    widest = float((q.nf4_levels()[1:] - q.nf4_levels()[:-1]).max())
    assert (rt["blocks"]["max_abs_error"] <= absmax.numpy() * widest / 2 + 1e-7).all()
    assert rt["bytes"]["weights"] == w.numel() // 2


def test_double_quantisation_saving_matches_bitsandbytes_state():
    w = torch.randn(576, 576)
    single = q.round_trip(w, double_quant=False)["bytes"]["constants"]
    double = q.round_trip(w, double_quant=True)["bytes"]["constants"]
    formula = q.double_quant_bytes(w.numel())
    assert formula["constants_fp32"] == single and formula["constants_double_quant"] == double
    assert formula["bits_per_weight_fp32"] == 0.5
    assert formula["bits_per_weight_double_quant"] == pytest.approx(0.127, abs=0.001)


def test_bad_blocksize_is_refused():
    with pytest.raises(ValueError, match="blocksize"):
        q.quantize(torch.randn(8, 8), blocksize=60)


def test_histogram_draws_the_levels():
    fig = q.weight_histogram(torch.randn(64, 64))
    assert len(fig.layout.shapes) == 16 and fig.layout.xaxis.title.text


@pytest.mark.model
def test_nf4_model_is_smaller_than_bf16():
    from labkit import load_model

    model, _ = load_model(quantization="4bit", device="cpu")
    nf4 = q.model_bytes(model)
    assert 0.25 * 538e6 < nf4 < 0.5 * 538e6   # fp32 is 538 MB; embeddings stay unquantised


@pytest.mark.parametrize("gpu, expected", [(None, torch.float32), ("T4", torch.float16), ("A100", torch.bfloat16)])
def test_qlora_computes_in_the_gpus_half_precision(fake_gpu, gpu, expected):
    """float32 on the CPU; on CUDA bf16 where native, else fp16 (a T4 only emulates bf16)."""
    from labkit.models import pick_device, quantization_config

    device = "cpu"
    if gpu:
        fake_gpu(gpu)
        device = pick_device()
    config = quantization_config("4bit", device=device)
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == expected
    chosen = quantization_config("4bit", compute_dtype=torch.float32, device=device)  # load_model(dtype=...)
    assert chosen.bnb_4bit_compute_dtype == torch.float32
