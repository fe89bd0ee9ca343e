"""Writes tests/fixtures/quant/llama/quantized.safetensors: rows of float32 values and the bytes
llama.cpp's own reference quantizers (quantize_row_<type>_ref of libggml-base, the functions
llama-quantize uses without an importance matrix) make of them, so test_quant can require
quantize_row to produce the same bytes: files this code writes then read exactly as files
llama.cpp writes.

Needs a llama.cpp build (not part of CI): pass its libggml-base.so with --lib.  The fixture
committed here was made with llama.cpp c392e5094deaf2d1a7c18683214f007fad3fe42b (Feb 2025).
`--check` regenerates into a temporary directory and compares (bytes identical expected: the
inputs are integer-exact numpy, the quantizers deterministic).

Rows (512 values each, so 2 k-quant super-blocks or 16 small blocks): gaussian; gaussian
with one value in 64 scaled by 20; gaussian * 1e-6 (scales near fp16's subnormals); |gaussian|
+ 3 (all positive: the min search's offset); 32-value runs alternately zero and gaussian *
1000; gaussian rounded to quarters (ties in every rounding step).
"""

import argparse
import ctypes
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import gguf_quants  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                       "fixtures", "quant", "llama", "quantized.safetensors")
COLS = 512
SEED = 1919
TYPES = ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
# Relative RMS error bounds on gaussian rows (tests/test_quant.cpp, kBounds).
GAUSSIAN_BOUND = {"Q8_0": 0.0059, "Q4_0": 0.0942, "Q4_K": 0.0784, "Q5_K": 0.0396,
                  "Q6_K": 0.0195, "Q8_K": 0.0077}


def input_rows():
    rng = np.random.default_rng(SEED)
    g = lambda: rng.standard_normal(COLS).astype(np.float32)  # noqa: E731
    outliers = g()
    outliers[rng.integers(0, 64, COLS) == 0] *= np.float32(20)
    runs = g() * np.float32(1000)
    runs[(np.arange(COLS) // 32) % 2 == 0] = 0
    rows = [g(), outliers, g() * np.float32(1e-6), np.abs(g()) + np.float32(3), runs,
            np.round(g() * 4) / np.float32(4)]
    return np.stack(rows).astype(np.float32)


class GgmlInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def llama_quantize(lib, type_name, x):
    _, values, nbytes = gguf_quants.TYPES[gguf_quants.ID[type_name]]
    out = np.zeros(x.size // values * nbytes, np.uint8)
    fn = getattr(lib, "quantize_row_%s_ref" % type_name.lower().replace("_k", "_K"))
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    x = np.ascontiguousarray(x, np.float32)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def write(path, lib_path):
    lib = ctypes.CDLL(lib_path)
    # ggml's fp16 -> fp32 conversions read a table that ggml_init fills.
    lib.ggml_init.argtypes = [GgmlInitParams]
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_init(GgmlInitParams(1 << 16, None, True))
    x = input_rows()
    tensors = [("input", torch.from_numpy(x.copy()))]
    for t in TYPES:
        q = np.stack([llama_quantize(lib, t, row) for row in x])
        # The quantized rows must decode (numpy reference) close to the input: the gaussian
        # row within test_quant's round-trip bound for the type (measured there).
        y = gguf_quants.dequantize(t, q.tobytes()).reshape(x.shape)
        assert np.all(np.isfinite(y)), t
        err = np.linalg.norm(y[0].astype(np.float64) - x[0]) / np.linalg.norm(x[0].astype(np.float64))
        assert err < GAUSSIAN_BOUND[t], (t, err)
        tensors.append((t.lower(), torch.from_numpy(q.copy())))
    meta = {"cols": str(COLS), "seed": str(SEED), "types": ",".join(TYPES),
            "llama.cpp": "quantize_row_<type>_ref of libggml-base"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(fixture_io.encode_safetensors(tensors, meta))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libggml-base.so of a llama.cpp build")
    ap.add_argument("--check", action="store_true", help="regenerate and compare")
    args = ap.parse_args()
    if not args.check:
        write(FIXTURE, args.lib)
        print("wrote %s (%d bytes)" % (FIXTURE, os.path.getsize(FIXTURE)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, "f.safetensors")
        write(fresh, args.lib)
        same = open(fresh, "rb").read() == open(FIXTURE, "rb").read()
        print("ok       llama/quantized.safetensors (bytes identical)" if same
              else "DIFFERS  llama/quantized.safetensors")
        sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
