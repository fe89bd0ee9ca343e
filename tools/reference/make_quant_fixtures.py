"""Writes tests/fixtures/quant/<type>.safetensors: random raw blocks of each GGUF quantized
type and their values as gguf_quants.py decodes them, for test_quant's bit-exact check of the
C++ dequantize_row.  `--check` regenerates into a temporary directory and compares (the
generation is integer-exact numpy, so the bytes must be identical).

Each block's bytes are uniform random except its scales, which run through the cases that
break a careless decoder: zero, fp16 subnormals (smallest and largest), the smallest normal,
ordinary values of both signs, and the largest finite fp16 (65504), for d and, independently,
dmin (Q8_K's fp32 d: zero, fp32 subnormal, ordinary, 1e30, both signs).  See
tools/reference/README.md.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import gguf_quants  # noqa: E402

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                           "fixtures", "quant")

# fp16 bit patterns: 0, -0, smallest and largest subnormal, smallest normal, 1, -0.0123,
# 0.5, -3.75e-4, 65504, -65504.
F16_SCALES = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xA24C, 0x3800, 0x8E25, 0x7BFF,
              0xFBFF]
F32_SCALES = [0.0, -0.0, 1e-40, -3e-39, 1.17549435e-38, 0.0123, -0.5, 3.0, 1e30, -1e30]

# type -> (blocks, fp16 scale fields as (byte offset), fp32 scale field offset or None)
CASES = [
    ("Q8_0", 24, [0], None),
    ("Q4_0", 24, [0], None),
    ("Q4_K", 12, [0, 2], None),
    ("Q5_K", 12, [0, 2], None),
    ("Q6_K", 12, [208], None),
    ("Q8_K", 10, [], 0),
    ("MXFP4", 24, [], None),
]
# MXFP4's E8M0 exponents: 2^-127 and 2^-126 (fp32 subnormals of the scale; 2^-128 x 12 and
# 2^-127 x 0.5 are subnormal values too), 2^-126, around 1, and large ones whose x 6 stays finite.
E8M0_SCALES = [0, 1, 2, 3, 100, 126, 127, 128, 129, 200, 250, 251]
SEED = 19


def make_blocks(name, nb, f16_fields, f32_field, rng):
    _, _, nbytes = gguf_quants.TYPES[gguf_quants.ID[name]]
    blocks = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    for i in range(nb):
        for k, off in enumerate(f16_fields):
            # Walk the list at a different pace per field so d and dmin meet in many pairs.
            pattern = F16_SCALES[(i * (k + 1) + 3 * k) % len(F16_SCALES)]
            blocks[i, off:off + 2] = np.frombuffer(np.uint16(pattern).tobytes(), np.uint8)
        if f32_field is not None:
            v = np.array([F32_SCALES[i % len(F32_SCALES)]], "<f4")
            blocks[i, f32_field:f32_field + 4] = np.frombuffer(v.tobytes(), np.uint8)
    if name == "Q4_K" or name == "Q5_K":
        blocks[1, 4:16] = 0xFF      # every 6-bit scale and min 63, all top bits set
        blocks[2, 4:16] = 0         # every scale 0: the block reads as -dmin * 0 = 0
    if name == "MXFP4":
        for i in range(nb):
            blocks[i, 0] = E8M0_SCALES[i % len(E8M0_SCALES)]
    if name == "Q6_K":
        blocks[1, 192:208] = np.frombuffer(np.array([-128, 127] * 8, np.int8).tobytes(), np.uint8)
    return blocks


def mxfp4_inputs(rng):
    """Rows of 4 blocks each for the MXFP4 quantizer: gaussian; one value in 16 scaled by 20;
    tiny (1e-30, near the exponent's floor) and huge (1e30) scales; a zero block beside others;
    exact midpoints between neighbouring E2M1 values of both signs (ties); amax one ulp below and
    at a power of two (the exponent's edge); values above 12/8 of the octave (clipped)."""
    g = lambda: rng.standard_normal(128).astype(np.float32)  # noqa: E731
    outliers = g()
    outliers[rng.integers(0, 16, 128) == 0] *= np.float32(20)
    zero_block = g()
    zero_block[32:64] = 0
    # block scale 2^(e-128) = 1 when amax is in [8, 16): midpoints of the doubled grid
    mids = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10, -0.5, -1.5, -2.5, -3.5, -5, -7, -10, 8, -8] * 8,
                    np.float32)
    edge = g() * np.float32(0.1)
    edge[0] = np.nextafter(np.float32(8), np.float32(0))   # amax just below 8
    edge[32] = np.float32(8)                              # amax exactly 8
    edge[64] = np.nextafter(np.float32(1), np.float32(0))
    edge[96] = np.float32(-0.25)
    clipped = g()
    clipped[::32] = np.float32(15.9)
    rows = [g(), outliers, g() * np.float32(1e-30), g() * np.float32(1e30), zero_block, mids,
            edge, clipped]
    return np.stack(rows).astype(np.float32)


def write_mxfp4_quantized(out_dir, rng, verbose):
    x = mxfp4_inputs(rng)
    blocks = np.stack([gguf_quants.quantize_mxfp4(row) for row in x])
    tensors = [("input", torch.from_numpy(x.copy())), ("blocks", torch.from_numpy(blocks.copy()))]
    meta = {"type": "MXFP4", "seed": str(SEED)}
    path = os.path.join(out_dir, "mxfp4_quantized.safetensors")
    with open(path, "wb") as f:
        f.write(fixture_io.encode_safetensors(tensors, meta))
    if verbose:
        print("wrote %s (%d rows, %d bytes)" % (path, x.shape[0], os.path.getsize(path)))


def write_all(out_dir, verbose=True):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for name, nb, f16_fields, f32_field in CASES:
        blocks = make_blocks(name, nb, f16_fields, f32_field, rng)
        values = gguf_quants.dequantize(name, blocks.tobytes())
        assert np.all(np.isfinite(values)), name
        tensors = [("blocks", torch.from_numpy(blocks.copy())),
                   ("values", torch.from_numpy(values.copy()))]
        meta = {"type": name, "ggml_type": str(gguf_quants.ID[name]), "seed": str(SEED)}
        path = os.path.join(out_dir, "%s.safetensors" % name.lower())
        with open(path, "wb") as f:
            f.write(fixture_io.encode_safetensors(tensors, meta))
        if verbose:
            print("wrote %s (%d blocks, %d bytes)" % (path, nb, os.path.getsize(path)))
    write_mxfp4_quantized(out_dir, rng, verbose)


if __name__ == "__main__":
    fixture_io.main(__doc__, FIXTURE_DIR, write_all)
