"""GGUF's quantized tensor types decoded with numpy, written from the format definition
(block layouts of ggml-common.h, the comment of include/moe/quant.h, ggml/docs/gguf.md), not
from the C++ code it checks.

Every type is a sequence of fixed-size blocks; `dequantize(type, raw)` turns the bytes of whole
blocks into float32 values in storage order.  The arithmetic is the format's, in float32 with
each product and difference rounded on its own (numpy float32 operations), which is what a
plain C loop without FMA contraction computes:

    Q8_0  (32 values, 34 bytes)  fp16 d, int8 q[32]                       x = q * d
    Q4_0  (32, 18)               fp16 d, u8 qs[16]: value j is the low nibble of qs[j],
                                 value j + 16 the high nibble             x = (q - 8) * d
    Q4_K  (256, 144)             fp16 d, fp16 dmin, u8 scales[12], u8 qs[128]
          8 sub-blocks of 32 with 6-bit scale sc and min m (scales, below);
          values 64c .. 64c+31 are the low nibbles of qs[32c .. 32c+31] (sub-block 2c),
          values 64c+32 .. 64c+63 their high nibbles (sub-block 2c + 1)
                                                                          x = (d * sc) * q - (dmin * m)
    Q5_K  (256, 176)             as Q4_K with u8 qh[32] after the scales: the fifth bit of
          value l of sub-block s is bit s of qh[l]
    Q6_K  (256, 210)             u8 ql[128], u8 qh[64], int8 scales[16], fp16 d
          per half h (128 values, ql[64h..], qh[32h..], scales[8h..]): value 32g + l
          (g = 0..3, l = 0..31) has low nibble (ql[l + 32(g % 2)] >> 4(g // 2)) & 15 and
          high 2 bits (qh[l] >> 2g) & 3; its scale is scales[8h + 2g + l // 16]
                                                                          x = (d * sc) * (q - 32)
    Q8_K  (256, 292)             fp32 d, int8 q[256], int16 bsums[16]     x = d * q
    MXFP4 (32, 17)               u8 e (E8M0), u8 qs[16]: value j is the low nibble of qs[j],
                                 value j + 16 the high nibble; a nibble is FP4 E2M1 (bit 3 the
                                 sign, bits 2-1 the exponent, bit 0 the mantissa: 0, 0.5, 1,
                                 1.5, 2, 3, 4, 6)                         x = e2m1(q) * 2^(e - 127)
          (the OCP Microscaling spec's E2M1 and E8M0; ggml-common.h's block_mxfp4 layout)

MXFP4 is also quantized here (`quantize_mxfp4`), by the rule of ggml's quantize_row_mxfp4_ref
and the OCP MX spec: the shared exponent e = floor(log2 amax) - 2 + 127 (amax the block's largest
magnitude, e = 0 for an all-zero block; clamped to 0..254) puts amax in the top octave of the
doubled E2M1 values k = 0, 1, 2, 3, 4, 6, 8, 12 times 2^(e - 128); each value takes the code q
whose k[q] * 2^(e - 128) is nearest (|k * d - x| in float32), the lowest code on a tie.

K-quant scales (12 bytes, sub-block j = 0..7): for j < 4, sc = b[j] & 63 and m = b[j + 4] & 63;
for j >= 4, sc = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4 and m = (b[j + 4] >> 4) | (b[j] >> 6) << 4.
"""

import numpy as np

F32 = np.float32

# ggml type id -> (name, values per block, bytes per block)
TYPES = {
    8: ("Q8_0", 32, 34),
    2: ("Q4_0", 32, 18),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    39: ("MXFP4", 32, 17),
}
ID = {name: tid for tid, (name, _, _) in TYPES.items()}


def _fp16(b):
    """Little-endian fp16 bytes [..., 2] -> float32 (exact: every fp16 is a float32)."""
    return np.ascontiguousarray(b).view("<f2")[..., 0].astype(F32)


def kquant_scales_mins(s):
    """[nb, 12] packed bytes -> (sc, m), each [nb, 8] integers 0..63."""
    s = s.astype(np.int32)
    sc = np.empty((s.shape[0], 8), np.int32)
    m = np.empty((s.shape[0], 8), np.int32)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            m[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4)
            m[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, m


def _q8_0(b):
    d = _fp16(b[:, 0:2])
    q = b[:, 2:34].view(np.int8).astype(F32)
    return q * d[:, None]


def _q4_0(b):
    d = _fp16(b[:, 0:2])
    qs = b[:, 2:18].astype(np.int32)
    q = np.concatenate([qs & 15, qs >> 4], axis=1) - 8   # values 0..15 then 16..31
    return q.astype(F32) * d[:, None]


def _kquant_levels(qs, qh):
    """Q4_K / Q5_K levels [nb, 256] from qs [nb, 128] (and qh [nb, 32] for Q5_K)."""
    nb = qs.shape[0]
    qs = qs.astype(np.int32)
    q = np.empty((nb, 256), np.int32)
    for s in range(8):
        c = s // 2
        nib = qs[:, 32 * c:32 * c + 32]
        q[:, 32 * s:32 * s + 32] = (nib & 15) if s % 2 == 0 else (nib >> 4)
        if qh is not None:
            q[:, 32 * s:32 * s + 32] |= ((qh.astype(np.int32) >> s) & 1) << 4
    return q


def _k_scaled(d, dmin, scales, q):
    sc, m = kquant_scales_mins(scales)
    d1 = d[:, None] * sc.astype(F32)        # [nb, 8], rounded
    m1 = dmin[:, None] * m.astype(F32)
    d1 = np.repeat(d1, 32, axis=1)
    m1 = np.repeat(m1, 32, axis=1)
    return d1 * q.astype(F32) - m1


def _q4_k(b):
    return _k_scaled(_fp16(b[:, 0:2]), _fp16(b[:, 2:4]), b[:, 4:16], _kquant_levels(b[:, 16:144], None))


def _q5_k(b):
    return _k_scaled(_fp16(b[:, 0:2]), _fp16(b[:, 2:4]), b[:, 4:16],
                     _kquant_levels(b[:, 48:176], b[:, 16:48]))


def _q6_k(b):
    nb = b.shape[0]
    ql = b[:, 0:128].astype(np.int32)
    qh = b[:, 128:192].astype(np.int32)
    scales = b[:, 192:208].view(np.int8).astype(F32)
    d = _fp16(b[:, 208:210])
    out = np.empty((nb, 256), F32)
    for h in range(2):
        for g in range(4):
            l = np.arange(32)
            low = (ql[:, 64 * h + 32 * (g % 2) + l] >> (4 * (g // 2))) & 15
            high = (qh[:, 32 * h + l] >> (2 * g)) & 3
            q = (low | (high << 4)) - 32
            sc = scales[:, 8 * h + 2 * g + l // 16]
            out[:, 128 * h + 32 * g + l] = (d[:, None] * sc) * q.astype(F32)
    return out


def _q8_k(b):
    d = np.ascontiguousarray(b[:, 0:4]).view("<f4")[:, 0]
    q = b[:, 4:260].view(np.int8).astype(F32)
    return d[:, None] * q


def _e2m1(code):
    """FP4 E2M1 codes (int array) -> float32: subnormal at exponent 0 (0 or 0.5), else
    (1 + m / 2) * 2^(e - 1)."""
    e, m = (code >> 1) & 3, code & 1
    mag = np.where(e == 0, 0.5 * m, (1.0 + 0.5 * m) * np.exp2(e - 1.0))
    return np.where(code & 8, -mag, mag).astype(F32)


def _mxfp4(b):
    scale = np.exp2(b[:, 0].astype(np.float64) - 127).astype(F32)   # exact: every 2^k, k >= -149
    qs = b[:, 1:17].astype(np.int32)
    q = np.concatenate([qs & 15, qs >> 4], axis=1)   # values 0..15 then 16..31
    # E2M1 code 8 is -0; ggml's decoder multiplies the scale by the integer 0 (its table holds
    # the doubled values as int8), giving +0, and so does this reader (-0 + 0 = +0).
    return _e2m1(q) * scale[:, None] + F32(0)


_DECODERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "Q8_K": _q8_k,
              "MXFP4": _mxfp4}


def dequantize(type_name, raw):
    """Bytes of whole blocks of type_name ("Q4_K", ...) -> float32 values, in storage order."""
    tid = ID[type_name]
    _, _, nbytes = TYPES[tid]
    raw = np.frombuffer(bytes(raw), np.uint8)
    if raw.size % nbytes:
        raise ValueError("%d bytes are not whole %s blocks of %d" % (raw.size, type_name, nbytes))
    blocks = raw.reshape(-1, nbytes)
    with np.errstate(over="ignore", invalid="ignore"):
        return _DECODERS[type_name](blocks).astype(F32).reshape(-1)


# The doubled E2M1 values by code (bit 3 the sign).
_MXFP4_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], F32)


def quantize_mxfp4(x):
    """float32 values (a multiple of 32) -> the bytes of MXFP4 blocks (e, then qs[16]: value j in
    the low nibble of qs[j], value j + 16 in the high one)."""
    x = np.asarray(x, F32).reshape(-1, 32)
    amax = np.max(np.abs(x), axis=1)
    _, ex = np.frexp(amax)            # amax = m * 2^ex, m in [0.5, 1): floor(log2 amax) = ex - 1
    e = np.where(amax > 0, np.clip(ex.astype(np.int64) - 1 - 2 + 127, 0, 254), 0)
    d = np.exp2(e.astype(np.float64) - 128).astype(F32)       # exact, 2^-128 a subnormal
    err = np.abs(_MXFP4_DOUBLED[None, None, :] * d[:, None, None] - x[:, :, None])
    q = np.argmin(err, axis=2).astype(np.uint8)               # the first of equal errors
    out = np.empty((x.shape[0], 17), np.uint8)
    out[:, 0] = e.astype(np.uint8)
    out[:, 1:] = q[:, :16] | (q[:, 16:] << 4)
    return out.reshape(-1)
