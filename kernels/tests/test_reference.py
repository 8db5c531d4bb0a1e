"""CPU tests of the reference path, the packing and the input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import awqgemm
from awqgemm import _layout
from awqgemm.testing import random_awq
from conftest import numpy_dequant


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_matches_float64_numpy(group, dtype):
    k, n = 4 * group, 48
    qweight, qzeros, scales = random_awq(k, n, group, dtype)
    w = awqgemm.dequantize_awq(qweight, qzeros, scales, group)
    w64 = numpy_dequant(qweight, qzeros, scales, group)
    # One rounding of the exact (q - z) * s to the dtype.
    eps = 2**-11 if dtype == torch.float16 else 2**-8
    assert np.all(np.abs(w.double().numpy() - w64) <= eps * np.abs(w64) + 1e-30)
    x = torch.randn(7, k, dtype=dtype)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, group)
    y = awqgemm.gemm(x, packed)
    ref = x.double().numpy() @ w64
    rel = np.linalg.norm(y.double().numpy() - ref) / np.linalg.norm(ref)
    assert rel < (2e-3 if dtype == torch.float16 else 1e-2), rel
    assert y.dtype == dtype and y.shape == (7, n)


def test_awq_nibble_order_round_trip():
    vals = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = _layout.pack_awq_int4(vals)
    assert torch.equal(_layout.unpack_awq_int4(packed), vals)
    # Column j of each 8 sits in nibble AWQ_ORDER[j]: check one word by hand.
    one = torch.zeros(1, 8, dtype=torch.uint8)
    one[0, 1] = 0xA  # column 1 -> nibble 4
    assert _layout.pack_awq_int4(one).item() == 0xA << 16


@pytest.mark.parametrize("layout", _layout.LAYOUTS)
@pytest.mark.parametrize("k,n", [(64, 16), (96, 8), (1120, 1376), (256, 40)])
def test_packed_layout_round_trip(layout, k, n):
    q = torch.randint(0, 16, (k, n), dtype=torch.uint8)
    packed = _layout.pack_qweight(q, layout)
    assert packed.shape == (-(-n // 16), -(-k // 64) * 128)
    assert torch.equal(_layout.unpack_qweight(packed, k, n, layout), q)


@pytest.mark.parametrize("layout", _layout.LAYOUTS)
def test_layout_lane_maps_are_permutations(layout):
    n, k = _layout._lane_maps(layout, torch.device("cpu"))
    flat = (n * 64 + k).sort().values
    assert torch.equal(flat, torch.arange(16 * 64))


def test_layout1_word_matches_mma_fragment():
    # Lane 4g+q, word s, nibble p=i+4hi: A register i of m16n8k16 holds rows
    # g (+8 for odd i) at logical k 2q (+8 for i >= 2) -> physical 16q + 4s + 2(i//2) + hi.
    n, k = _layout._lane_maps(_layout.LAYOUT_TC16X64, torch.device("cpu"))
    n, k = n.view(32, 4, 8), k.view(32, 4, 8)
    lane, s, p = 4 * 5 + 3, 2, 6  # g=5, q=3, i=2, hi=1
    assert n[lane, s, p] == 5 and k[lane, s, p] == 16 * 3 + 4 * 2 + 2 + 1


def test_scale_zero_round_trip():
    qweight, qzeros, scales = random_awq(192, 40, 64, torch.bfloat16)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    s, z = _layout.unpack_scale_zero(packed.scales, 192, 40, 64)
    assert torch.equal(s, scales)
    assert torch.equal(z.to(torch.uint8), _layout.unpack_awq_int4(qzeros))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unpack_awq_inverts_pack(dtype):
    qweight, qzeros, scales = random_awq(320, 1376, 64, dtype)
    back = awqgemm.unpack_awq(awqgemm.pack_awq(qweight, qzeros, scales, 64))
    for got, want in zip(back, (qweight, qzeros, scales), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_bias_and_leading_dims():
    qweight, qzeros, scales = random_awq(128, 24, 64, torch.float16)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    x = torch.randn(2, 3, 128, dtype=torch.float16)
    bias = torch.randn(24, dtype=torch.float16)
    y = awqgemm.gemm(x, packed, bias)
    w = awqgemm.dequantize_awq(qweight, qzeros, scales, 64).float()
    ref = (x.float() @ w + bias.float()).half()
    assert y.shape == (2, 3, 24)
    torch.testing.assert_close(y, ref, rtol=2e-3, atol=2e-3)


def test_empty_batch():
    qweight, qzeros, scales = random_awq(64, 16, 32)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 32)
    assert awqgemm.gemm(torch.empty(0, 64, dtype=torch.float16), packed).shape == (0, 16)


def test_opcheck_cpu():
    qweight, qzeros, scales = random_awq(128, 32, 64)
    p = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    x = torch.randn(3, 128, dtype=torch.float16)
    bias = torch.randn(32, dtype=torch.float16)
    for b in (None, bias):
        torch.library.opcheck(torch.ops.awqgemm.gemm.default, (x, p.qweight, p.scales, b, p.K, p.N, 64, p.layout))


def test_torch_compile_fullgraph_cpu():
    qweight, qzeros, scales = random_awq(128, 32, 64, torch.float32)
    p = awqgemm.pack_awq(qweight, qzeros, scales, 64)

    def f(x):
        return awqgemm.gemm(x, p) * 2

    x = torch.randn(5, 128)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_build_info_shape():
    info = awqgemm.build_info()
    for key in ("version", "cuda_version", "sass_archs", "ptx_archs", "kernel_families"):
        assert key in info
    assert info["kernel_families"][-1] == "reference"


def test_build_info_families_match_the_build():
    """The families build_info() claims must be ones this build can run and the tests can force.

    A CPU-only build claims none; a CUDA build's families must each be forceable by their arch
    (awqgemm.testing.FAMILIES, which the GPU tests use to cover every family) and need an arch
    the build carries code for (SASS at or above the family's, or PTX to JIT from)."""
    info = awqgemm.build_info()
    gpu_families = [f for f in info["kernel_families"] if f != "reference"]
    if info["cuda_version"] is None:
        assert not awqgemm.have_cuda_kernels()
        assert gpu_families == [], f"a CPU-only build claims GPU kernel families {gpu_families}"
        return
    assert gpu_families, "a CUDA build reports no kernel family"
    forceable = {cc: name for name, cc in awqgemm.testing.FAMILIES.items() if name != "auto"}
    for fam in gpu_families:
        cc = int("".join(ch for ch in fam.split("_")[0][2:] if ch.isdigit()))  # "sm90a_m64nNk16" -> 90
        assert cc in forceable, f"family {fam}: awqgemm.testing cannot force it (knows {sorted(forceable.values())})"
        runnable = any(a >= cc for a in info["sass_archs"]) or bool(info["ptx_archs"])
        assert runnable, f"family {fam} needs sm_{cc}+, but the build has SASS {info['sass_archs']} and no PTX"


def test_cuda_tensor_on_a_cpu_only_build_says_how_to_get_kernels(monkeypatch):
    """No GPU needed: a tensor that reports a CUDA device reaches the checks of the public API."""

    class CudaLooking(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 0)

    monkeypatch.setattr(awqgemm._ext, "_C", None)  # a CPU-only build, whatever this one is
    qweight, qzeros, scales = random_awq(128, 16, 64)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    x = torch.randn(2, 128, dtype=torch.float16).as_subclass(CudaLooking)
    assert x.device.type == "cuda"
    with pytest.raises(ValueError, match=r"x is a CUDA tensor .* built without CUDA kernels.*pip install \./kernels"):
        awqgemm.gemm(x, packed)
    with pytest.raises(ValueError, match=r"scales is a CUDA tensor .* built without CUDA kernels.*awqgemm \* cuda\*"):
        awqgemm.pack_awq(*(t.as_subclass(CudaLooking) for t in (qweight, qzeros, scales)), 64)
    # with CUDA kernels the same tensor passes this check and meets the next one (devices differ)
    monkeypatch.setattr(awqgemm._ext, "_C", object())
    with pytest.raises(ValueError, match="is on cuda:0 but the packed weight is on cpu"):
        awqgemm.gemm(x, packed)


# ---- bad inputs: every one a clear ValueError / TypeError naming the problem ----


def _good():
    return random_awq(128, 16, 64)


@pytest.mark.parametrize(
    "mutate,exc,msg",
    [
        (lambda a: (a[0].to(torch.int64), a[1], a[2], 64), TypeError, "qweight must be int32"),
        (lambda a: (a[0], a[1].float(), a[2], 64), TypeError, "qzeros must be int32"),
        (lambda a: (a[0], a[1], a[2].to(torch.int32), 64), TypeError, "scales must be float16 or bfloat16"),
        (lambda a: (a[0], a[1], a[2], 48), ValueError, "group_size 48 is not supported"),
        (lambda a: (a[0], a[1], a[2], 64.0), TypeError, "group_size must be an int"),
        (lambda a: (a[0][:96], a[1], a[2], 64), ValueError, "not a multiple of group_size"),
        (lambda a: (a[0], a[1], a[2][:, :8], 64), ValueError, "scales must have shape"),
        (lambda a: (a[0], a[1][:1], a[2], 64), ValueError, "qzeros must have shape"),
        (lambda a: (a[0].flatten(), a[1], a[2], 64), ValueError, "qweight must be 2-D"),
        (lambda a: (a[0].numpy(), a[1], a[2], 64), TypeError, "qweight must be a torch.Tensor"),
        (lambda a: (a[0].to("meta"), a[1], a[2], 64), ValueError, "same device"),
    ],
)
def test_pack_errors(mutate, exc, msg):
    with pytest.raises(exc, match=msg):
        awqgemm.pack_awq(*mutate(_good()))


def test_gemm_errors():
    qweight, qzeros, scales = _good()
    p = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    x = torch.randn(2, 128, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"shape \[..., K=128\]"):
        awqgemm.gemm(torch.randn(2, 64, dtype=torch.float16), p)
    with pytest.raises(TypeError, match=r"packed with torch\.float16 scales"):
        awqgemm.gemm(x.bfloat16(), p)
    with pytest.raises(TypeError, match="x must be"):
        awqgemm.gemm(x.to(torch.int32), p)
    with pytest.raises(TypeError, match="PackedWeight"):
        awqgemm.gemm(x, (qweight, qzeros, scales))
    with pytest.raises(ValueError, match=r"bias must have shape \[N=16\]"):
        awqgemm.gemm(x, p, torch.zeros(15, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"bias must be torch\.float16"):
        awqgemm.gemm(x, p, torch.zeros(16))
    with pytest.raises(ValueError, match="is on meta"):
        awqgemm.gemm(x.to("meta"), p)
    # A PackedWeight whose tensors do not match its K / N / group (hand-built, or sliced) is refused
    # before any kernel would read past its end.
    from dataclasses import replace

    with pytest.raises(
        ValueError,
        match=r"packed\.qweight must be int32 of shape \[1, 384\] for K=192, N=16, got torch\.int32 \[1, 256\]",
    ):
        awqgemm.gemm(torch.randn(2, 192, dtype=torch.float16), replace(p, K=192))
    with pytest.raises(ValueError, match=r"packed\.scales must have shape \[4, 32\]"):
        awqgemm.gemm(x, replace(p, group_size=32))
    with pytest.raises(ValueError, match=r"packed\.qweight must be contiguous"):
        wide = torch.zeros(1, 512, dtype=torch.int32)
        awqgemm.gemm(x, replace(p, qweight=wide[:, ::2]))


def test_force_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown kernel family"), awqgemm.testing.force(family="sm60"):
        pass
    with pytest.raises(ValueError, match="unknown path"), awqgemm.testing.force(path="fast"):
        pass


def _knob_table():
    from awqgemm import _knobs

    return _knobs.KNOBS


@pytest.mark.parametrize("name", sorted(_knob_table()))
def test_tuning_knobs_reject_malformed_values(name):
    """Every knob of the one table: outside its range or not an integer -> ValueError naming both."""
    from awqgemm import _knobs

    lo, hi, _ = _knob_table()[name]
    for raw in (str(lo - 1), str(hi + 1), "on", "2.5"):
        with pytest.raises(ValueError, match=rf"{name}='{raw}' must be an integer in \[{lo}, {hi}\]"):
            _knobs.check_environment({name: raw})


def test_tuning_knobs_accept_defaults_and_valid_values():
    from awqgemm import _knobs

    _knobs.check_environment({})
    for name, (lo, hi, _) in _knob_table().items():
        _knobs.check_environment({name: str(lo), "OTHER": "x"})
        _knobs.check_environment({name: f" {hi} "})
        _knobs.check_environment({name: ""})  # empty counts as unset


def test_import_fails_loudly_on_a_malformed_knob():
    import os
    import subprocess
    import sys

    env = {**os.environ, "AWQGEMM_PDL": "yes"}
    r = subprocess.run([sys.executable, "-c", "import awqgemm"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "AWQGEMM_PDL='yes'" in r.stderr


def test_plan_info_off_the_gpu_is_the_reference_path_and_checks_its_inputs():
    assert awqgemm.plan_info(64, 4096, 4096, torch.float16, "cpu")["kernel"] == "reference"
    with pytest.raises(ValueError, match="M must be a positive int"):
        awqgemm.plan_info(0, 4096, 4096)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        awqgemm.plan_info(1, 4096, 4096, torch.float32, "cpu")
