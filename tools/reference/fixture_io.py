"""What the fixture generators share: the hand-written safetensors writer/reader,
the tolerant comparison behind ``--check`` and the command line.

Used by make_layer_fixtures.py and make_model_fixtures.py (and their tests).

File format (no ``safetensors`` package): u64 LE header length N, N bytes of JSON
header padded with spaces so that 8 + N is a multiple of 8, then the tensors
little-endian row-major back to back in the order written.  float64 tensors are
written as F64, int64 tensors as I64 (and, for the Hugging Face checkpoint fixtures,
float32/float16/bfloat16/int32 as F32/F16/BF16/I32).  See tools/reference/README.md.

Comparison (``--check``): a regenerated file passes if it is byte-identical to the
committed one, or else if both decode to the same metadata, tensor names (in
order), dtypes and shapes, the same values for every integer tensor and for every
F64 tensor whose committed or regenerated values are all integers (expert ids,
counts, masks: discrete decisions, which must not move at all), and, for every
other F64 tensor c (committed) and f (regenerated),

    max |f - c|  <=  RTOL * max |c|  +  ATOL          (RTOL = 1e-9, ATOL = 1e-12)

with non-finite values required to match exactly.  Why this tolerance: another
CPU / BLAS build only changes summation order, which moves float64 results by a
few ulps of the tensor's largest terms: the layer fixtures made on another
machine differ here by at most 5e-16 relative to max |c|, and perturbing the
model fixtures' initial weights by 1e-15 relative moves the weights after their
10 AdamW steps by at most 1.3e-13 relative; 1e-9 leaves a margin of 1e4 or more.
Every real change stays far above it: a changed formula, seed or routing decision
moves values by O(1e-3) or more, and even computing in float32 instead of float64
gives about 1e-7.  ATOL only matters for a tensor whose max |c| is itself at the
level of cancellation noise (a gradient that nearly cancels: its rounding error
follows the size of the cancelled terms, not of the result).
"""

import argparse
import json
import os
import struct
import sys
import tempfile

import numpy as np
import torch

RTOL = 1e-9
ATOL = 1e-12

_DTYPES = {torch.float64: ("F64", "<f8"), torch.int64: ("I64", "<i8"),
           # used by the Hugging Face checkpoint fixtures (make_hf_fixtures.py)
           torch.float32: ("F32", "<f4"), torch.float16: ("F16", "<f2"), torch.int32: ("I32", "<i4"),
           torch.bfloat16: ("BF16", "<i2"),
           # raw quantized blocks (make_quant_fixtures.py)
           torch.uint8: ("U8", "<u1")}
_NUMPY = {"F64": "<f8", "I64": "<i8", "F32": "<f4", "F16": "<f2", "I32": "<i4", "BF16": "<i2",
          "U8": "<u1"}

# Mantissa bits of the narrow float types: a value rounded from float64 to one of them
# moves by at most 2^-bits of its magnitude (see compare_tensor_rounded).
_MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def _tensor_bytes(t, npt):
    """Little-endian bytes of t.  numpy has no bfloat16, so BF16 travels as its raw 16 bits."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return np.ascontiguousarray(t.numpy(), dtype=npt).tobytes()


def _tensor_from(raw, st, shape):
    """Inverse of _tensor_bytes for one tensor of safetensors dtype st."""
    t = torch.from_numpy(np.frombuffer(raw, dtype=_NUMPY[st]).reshape(shape).copy())
    return t.view(torch.bfloat16) if st == "BF16" else t


# --------------------------------------------------------------------------
# safetensors (hand-written)
# --------------------------------------------------------------------------

def encode_safetensors(tensors, metadata):
    """Bytes of a safetensors file holding the ordered (name, tensor) list."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors:
        if name in header:
            raise ValueError("duplicate tensor name %s" % name)
        st, npt = _DTYPES[t.dtype]
        data = _tensor_bytes(t, npt)
        header[name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-(8 + len(hjson))) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def decode_safetensors(blob):
    """Inverse of encode_safetensors: ({name: tensor} in file order, metadata)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = _tensor_from(blob[base + b:base + e], info["dtype"], info["shape"])
    return out, meta


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------

def compare_tensor(committed, fresh):
    """(problem or None, relative difference) of one tensor pair, as described above.

    The relative difference is max |fresh - committed| / max |committed| (the absolute
    difference where the committed tensor is all zeros)."""
    c, f = committed, fresh
    if c.dtype != f.dtype:
        return "dtype %s, regenerated %s" % (c.dtype, f.dtype), float("inf")
    if c.shape != f.shape:
        return "shape %s, regenerated %s" % (list(c.shape), list(f.shape)), float("inf")
    if c.numel() == 0:
        return None, 0.0
    if not c.is_floating_point():
        if torch.equal(c, f):
            return None, 0.0
        return "integer values differ at %d of %d elements" % (int((c != f).sum()), c.numel()), float("inf")
    finite = torch.isfinite(c)
    if not torch.equal(finite, torch.isfinite(f)) or not torch.equal(c[~finite].isnan(), f[~finite].isnan()) \
            or not torch.equal(c[~finite].nan_to_num(0.0), f[~finite].nan_to_num(0.0)):
        return "non-finite values differ", float("inf")
    c, f = c[finite], f[finite]
    if c.numel() == 0:
        return None, 0.0
    diff = float((f - c).abs().max())
    scale = float(c.abs().max())
    rel = diff / scale if scale > 0 else diff
    if bool(torch.all(c == torch.round(c))) or bool(torch.all(f == torch.round(f))):
        # a stored discrete quantity (expert id, count, mask): exact
        if diff != 0:
            return "integer-valued, differs at %d of %d elements (max abs diff %.3g)" \
                % (int((c != f).sum()), c.numel(), diff), rel
        return None, 0.0
    if diff > RTOL * scale + ATOL:
        return "max abs diff %.3g, max rel diff %.3g (> %g * max|value| %.3g + %g)" \
            % (diff, rel, RTOL, scale, ATOL), rel
    return None, rel


def compare_tensor_rounded(committed, fresh):
    """compare_tensor for tensors that hold float64 results rounded to F32, F16 or BF16.

    Rounding amplifies a float64 difference of a few ulps into a whole ulp of the narrow
    type whenever the exact value sits next to a rounding boundary, so these may differ,
    element by element, by one ulp of that type on top of the float64 tolerance:

        |f - c|  <=  2^-bits * max(|c|, |f|)  +  RTOL * max |c|  +  ATOL

    (bits = 23, 10, 7).  A real change (a formula, a seed, a flipped decision) is still
    far above: O(1e-3) against 1.2e-7 for F32.  Every other dtype goes to compare_tensor."""
    c, f = committed, fresh
    if c.dtype not in _MANTISSA_BITS or c.dtype != f.dtype or c.shape != f.shape:
        return compare_tensor(committed, fresh)
    c, f = c.double(), f.double()
    finite = torch.isfinite(c)
    if not torch.equal(finite, torch.isfinite(f)) or not torch.equal(c[~finite].nan_to_num(0.0),
                                                                   f[~finite].nan_to_num(0.0)):
        return "non-finite values differ", float("inf")
    c, f = c[finite], f[finite]
    if c.numel() == 0:
        return None, 0.0
    diff = (f - c).abs()
    scale = float(c.abs().max())
    bound = 2.0 ** -_MANTISSA_BITS[committed.dtype] * torch.maximum(c.abs(), f.abs()) + RTOL * scale + ATOL
    rel = float(diff.max()) / scale if scale > 0 else float(diff.max())
    bad = diff > bound
    if bool(bad.any()):
        return "%d of %d elements differ by more than one ulp (max abs diff %.3g, max rel diff %.3g)" \
            % (int(bad.sum()), c.numel(), float(diff.max()), rel), rel
    return None, rel


def compare_blobs(committed, fresh, compare=None):
    """([problem lines], max relative difference, name of that tensor) of two files.

    compare: the per-tensor comparison (default compare_tensor)."""
    compare = compare or compare_tensor
    try:
        a, ma = decode_safetensors(committed)
        b, mb = decode_safetensors(fresh)
    except Exception as exc:  # noqa: BLE001 - report, still fail
        return ["cannot decode: %s" % exc], float("inf"), None
    problems = []
    if ma != mb:
        keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        problems.append("metadata differs: %s" % ", ".join(keys))
    if list(a) != list(b):
        old, new = [n for n in a if n not in b], [n for n in b if n not in a]
        problems.append("tensor names differ (only committed: %s, only regenerated: %s%s)"
                        % (old, new, "" if old or new else ", order changed"))
    worst, where = 0.0, None
    for n in a:
        if n not in b:
            continue
        problem, rel = compare(a[n], b[n])
        if problem is not None:
            problems.append("%s: %s" % (n, problem))
        elif rel > worst:
            worst, where = rel, n
    return problems, worst, where


def check(directory, write_all):
    """Regenerate with write_all(tmp, verbose=False) and compare with directory; True if all pass."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        write_all(tmp, verbose=False)
        expected = sorted(os.listdir(tmp))
        present = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")) \
            if os.path.isdir(directory) else []
        for f in sorted(set(present) - set(expected)):
            print("unexpected fixture %s" % f)
            ok = False
        for f in expected:
            path = os.path.join(directory, f)
            if not os.path.exists(path):
                print("missing %s" % f)
                ok = False
                continue
            with open(os.path.join(tmp, f), "rb") as fh:
                new = fh.read()
            with open(path, "rb") as fh:
                old = fh.read()
            if old == new:
                print("ok       %s (bytes identical)" % f)
                continue
            problems, worst, where = compare_blobs(old, new)
            if not problems:
                print("ok       %s (max rel diff %.3g in %s)" % (f, worst, where))
                continue
            ok = False
            print("DIFFERS  %s" % f)
            for p in problems:
                print("    %s" % p)
    return ok


# --------------------------------------------------------------------------

def case_named(cases, name):
    """The entry of a generator's CASES list whose first field is name."""
    for c in cases:
        if c[0] == name:
            return c
    raise KeyError(name)


def main(doc, fixture_dir, write_all):
    """Command line of a generator: write the fixtures, or --check them."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and compare with the committed files "
                         "(bytes, else values within float64 rounding; see fixture_io.py)")
    ap.add_argument("--out", default=fixture_dir, help="fixture directory (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(1)   # fixed reduction order
    if args.check:
        sys.exit(0 if check(args.out, write_all) else 1)
    write_all(args.out)
