"""CPU check of the sm90a wgmma kernel's activation staging (gemm_sm90a_m64nNk16.cu).

The kernel takes A (weights) from registers in packed layout 1, whose k order
inside a lane's fragment is permuted, and B (activations) from shared memory
through a 128-byte-swizzle K-major descriptor. It cancels the permutation by
writing each 4-byte pair of x to a permuted, swizzled address. This test
models both sides from the published semantics and checks they meet:

* A side: in packed layout 1 (packed_layout.h), register i of lane (g, q) for
  k-step s holds actual k = 16 q + 4 s + 2 (i >> 1) + {0, 1}; the MMA reads it
  as logical k = 2 q + 8 (i >> 1) + {0, 1} (the m16n8k16 / wgmma A fragment).
* B side: the wgmma descriptor of step s starts 32 s bytes into 128-byte rows;
  token r's logical k j sits at byte 128 r + 32 s + 16 (j // 8) + 2 (j % 8)
  before the swizzle, and the 128-byte swizzle XORs the 16-byte chunk index
  (address bits 4-6) with the row inside the 1024-byte atom (bits 7-9).
* Staging: lane u of warp w writes unit u (actual k 2u, 2u + 1) of row r to
  byte 128 r + 16 ((u & 7) ^ (r & 7)) + 4 (u >> 3).

If the three agree, every (step, logical k, token) the wgmma reads holds the
activation the A register it meets was dequantized for, so the product is
x @ W. The GPU tests check the real kernel; this pins the index algebra, so a
GPU failure points at the hardware model (descriptor fields), not at this.
"""

from __future__ import annotations

import torch

ROWS = 64  # tokens in a tile (any multiple of 8)


def staged_tile(x: torch.Tensor) -> torch.Tensor:
    """x [ROWS, 64] -> the kernel's shared-memory image, as [ROWS * 64] elements (2-byte slots)."""
    smem = torch.full((ROWS * 64,), -1, dtype=torch.int64)
    for r in range(ROWS):
        for u in range(32):
            byte = 128 * r + 16 * ((u & 7) ^ (r & 7)) + 4 * (u >> 3)
            smem[byte // 2] = x[r, 2 * u]
            smem[byte // 2 + 1] = x[r, 2 * u + 1]
    return smem


def wgmma_reads(smem: torch.Tensor, s: int, r: int, j: int) -> int:
    """The element a K-major SW128 descriptor at +32 s bytes yields for token r, logical k j."""
    plain = 128 * r + 32 * s + 16 * (j // 8) + 2 * (j % 8)
    chunk = (plain >> 4) & 7
    row_in_atom = (plain >> 7) & 7
    swizzled = (plain & ~(7 << 4)) | ((chunk ^ row_in_atom) << 4)
    return int(smem[swizzled // 2])


def a_fragment_actual_k(s: int, j: int) -> int:
    """Actual k (within the 64-k tile) of the weight the A fragment pairs with logical k j at step s."""
    q, t, half = (j % 8) // 2, j % 2, j // 8
    return 16 * q + 4 * s + 2 * half + t


def test_staging_meets_the_a_fragment():
    # Each x element carries its own (token, k) so a mismatch names itself.
    x = torch.arange(ROWS * 64, dtype=torch.int64).view(ROWS, 64)
    smem = staged_tile(x)
    assert (smem >= 0).all(), "staging left holes"
    assert torch.equal(smem.sort().values, x.flatten()), "staging is not a permutation"
    for s in range(4):
        for r in range(ROWS):
            for j in range(16):
                got = wgmma_reads(smem, s, r, j)
                want = int(x[r, a_fragment_actual_k(s, j)])
                where = f"step {s} token {r} logical k {j}"
                assert got == want, f"{where}: reads x{divmod(got, 64)}, the A fragment wants {r, want % 64}"


def test_a_fragment_covers_each_k_once():
    seen = sorted(a_fragment_actual_k(s, j) for s in range(4) for j in range(16))
    assert seen == list(range(64))


def test_staging_writes_are_bank_conflict_free():
    # One warp instruction: lanes u = 0..31 of warp w write row r = w + 8 i.
    for r in range(ROWS):
        banks = {((128 * r + 16 * ((u & 7) ^ (r & 7)) + 4 * (u >> 3)) // 4) % 32 for u in range(32)}
        assert len(banks) == 32, f"row {r}: {32 - len(banks)} bank conflicts"


def staged_x_row(x_row: torch.Tensor) -> torch.Tensor:
    """One row of 64 k in the A fragments' k order (v11.1's staging writes it tile-major, v9 gathers it):
    chunk c = 2 s + h, word q' = pair at 16 q' + 4 s + 2 h."""
    out = torch.empty(64, dtype=x_row.dtype)
    for kc in range(8):
        k0 = 4 * (kc >> 1) + 2 * (kc & 1)
        for qq in range(4):
            out[8 * kc + 2 * qq : 8 * kc + 2 * qq + 2] = x_row[k0 + 16 * qq : k0 + 16 * qq + 2]
    return out


def test_staged_x_meets_the_a_fragment():
    # The GEMM copies staged chunk c of row r whole to byte 128 r + 16 (c ^ (r & 7)).
    x = torch.arange(ROWS * 64, dtype=torch.int64).view(ROWS, 64)
    smem = torch.full((ROWS * 64,), -1, dtype=torch.int64)
    for r in range(ROWS):
        row = staged_x_row(x[r])
        for c in range(8):
            byte = 128 * r + 16 * (c ^ (r & 7))
            smem[byte // 2 : byte // 2 + 8] = row[8 * c : 8 * c + 8]
    for s in range(4):
        for r in range(ROWS):
            for j in range(16):
                assert wgmma_reads(smem, s, r, j) == int(x[r, a_fragment_actual_k(s, j)]), (s, r, j)
