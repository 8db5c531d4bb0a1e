"""The test suite's AWQ quantizer writes the real AWQ format (checked by hand,
against awqgemm's own dequantizer, and by round trips)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import awq_tiny


def test_nibble_order_by_hand():
    # column j of 8 sits in nibble [0,4,1,5,2,6,3,7][j]; values 0..7 in columns 0..7
    # give nibbles (low to high) 0,2,4,6,1,3,5,7
    word = awq_tiny.pack_awq_int4(torch.arange(8).reshape(1, 8))
    assert word.dtype == torch.int32
    assert int(word) == 0x75316420
    # a high nibble >= 8 makes the int32 negative, as in real checkpoints
    word = awq_tiny.pack_awq_int4(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 15]]))
    assert int(word) == -(2**28)  # 0xF0000000


def test_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 16, (64, 96), generator=g)
    torch.testing.assert_close(awq_tiny.unpack_awq_int4(awq_tiny.pack_awq_int4(v)), v)
    with pytest.raises(ValueError, match=r"in 0\.\.15"):
        awq_tiny.pack_awq_int4(v + 1)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantizer_agrees_with_awqgemm_dequantize_awq(group):
    import awqgemm

    g = torch.Generator().manual_seed(group)
    w = torch.randn(96, 256, generator=g)  # nn.Linear [N, K]
    q = awq_tiny.quantize_awq(w, group)
    assert q.qweight.shape == (256, 12) and q.qweight.dtype == torch.int32
    assert q.qzeros.shape == (256 // group, 12) and q.qzeros.dtype == torch.int32
    assert q.scales.shape == (256 // group, 96) and q.scales.dtype == torch.float16
    ours = awq_tiny.dequantize(q, group)
    lib = awqgemm.dequantize_awq(q.qweight, q.qzeros, q.scales, group).to(torch.float32)
    # the library returns the scales' dtype (fp16): equal up to that rounding
    torch.testing.assert_close(lib, ours, rtol=1e-3, atol=1e-3)
    # and the 4-bit round-to-nearest error is bounded by half a step
    step = q.scales.to(torch.float32).repeat_interleave(group, 0)
    assert ((ours - w.t()).abs() <= step / 2 + 1e-3).all()


def test_checkpoint_files(tmp_path):
    tok = str(tmp_path / "tok")
    assert awq_tiny.train_tokenizer(tok) == 512
    spec = awq_tiny.TinySpec("qwen2", group_size=32)
    out = str(tmp_path / "m")
    ref = awq_tiny.write_awq_checkpoint(out, spec, tok)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["quantization_config"]["quant_method"] == "awq"
    assert cfg["quantization_config"]["group_size"] == 32
    from safetensors.torch import load_file

    t = load_file(os.path.join(out, "model.safetensors"))
    assert t["model.layers.0.self_attn.q_proj.qweight"].dtype == torch.int32
    assert "model.layers.0.self_attn.q_proj.weight" not in t
    assert t["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float16
    assert ref["model.layers.0.self_attn.q_proj.weight"].shape == (128, 128)
