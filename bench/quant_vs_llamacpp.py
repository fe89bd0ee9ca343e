#!/usr/bin/python3
"""moe against llama.cpp on identical quantized GGUF files, 2 threads (issue 19's table).

For each weight type, writes the random Mixtral-shaped model (bench/configs/mixtral-random.json:
d=1024, 4 layers, 16/4 heads, 8 experts of 2816, top-2, vocab 32000) with
`moe quantize --random CONFIG OUT.gguf --type T`, then times on that one file
  llama.cpp: llama-bench -m FILE -p 128 -n 64 -t 2 -r REPS -o json (median of its samples)
  moe:       moe generate --model FILE --prompt-ids <128 ids> --max-new-tokens 65 --ignore-eos
             --temperature 0 --threads 2 --warmup, REPS runs (median of its prompt and decode
             tokens/s)
Both warm up before they time: llama-bench runs one untimed prompt and one token first, and so
does `--warmup`. Without it moe's prompt would also carry the first touch of every weight page
and working buffer (on this VM the first prefill of the q4_0 file takes about twice as long as the
next); --cold times moe that way, the first prompt of a fresh process.
and prints one table: decode and 128-token prompt tokens/s of both and the ratios, the weight
bytes a decoded token reads (from the file's tensor table: every non-expert matrix, top-k of E
of each expert tensor, one embedding row) times tokens/s against the host's read bandwidth
(build/bench/read_bandwidth), and peak resident memory (/usr/bin/time -f %M) against the file size.
--qwen3 adds the Qwen3-30B-A3B shapes at Q4_K (an 17 GB file) as the qwen3moe architecture;
--qwen3-llama the same shapes as the llama (Mixtral) architecture, for llama.cpp builds older
than qwen3moe (April 2025): identical weights and work per token except Qwen3's q/k RMSNorm
(2 x 48 RMSNorms of 128 values per head, under 0.01% of a token's FLOPs).

  bench/quant_vs_llamacpp.py [LLAMA_BIN_DIR] [--types f32,bf16,...] [--reps 3] [--qwen3] [--qwen3-llama]
                             [--moe build/moe] [--out bench/out] [--cold]
Without LLAMA_BIN_DIR only moe's figures are printed. Nothing of llama.cpp is built here.
"""
import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TYPES = ["f32", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m"]

# ggml type id -> (values per block, bytes per block), as GGUF defines them.
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
               8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
               14: (256, 210), 30: (1, 2)}


def read_gguf_tensors(path):
    """(metadata dict of scalar values, [(name, dims, type)]) from a GGUF file's header."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                  11: "q", 12: "d"}

        def value(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                it, n = rd("I"), rd("Q")
                if it in scalar:  # skip without building huge lists (vocabularies)
                    f.seek(n * struct.calcsize("<" + scalar[it]), 1)
                else:
                    for _ in range(n):
                        value(it)
                return None
            raise ValueError(f"{path}: unknown metadata type {t}")
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        rd("I")
        n_tensors, n_kv = rd("Q"), rd("Q")
        meta = {}
        for _ in range(n_kv):
            key = rstr()
            meta[key] = value(rd("I"))
        tensors = []
        for _ in range(n_tensors):
            name = rstr()
            dims = [rd("Q") for _ in range(rd("I"))]
            t = rd("I")
            rd("Q")
            tensors.append((name, dims, t))
        return meta, tensors


def tensor_bytes(dims, t):
    vals, nbytes = GGML_BLOCKS[t]
    n = 1
    for d in dims:
        n *= d
    return n // vals * nbytes


def active_bytes_per_token(path):
    """Weight bytes one decoded token reads: all of every non-expert tensor, k/E of each stacked
    expert tensor (ffn_*_exps), one row of the embedding table."""
    meta, tensors = read_gguf_tensors(path)
    arch = meta.get("general.architecture", "")
    k, E = meta.get(f"{arch}.expert_used_count", 1), meta.get(f"{arch}.expert_count", 1)
    total = 0.0
    for name, dims, t in tensors:
        b = tensor_bytes(dims, t)
        if name == "token_embd.weight":
            total += b / dims[1]
        elif "_exps" in name:
            total += b * k / E
        else:
            total += b
    return total


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time -f %M: (stdout, stderr, peak resident KB)."""
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss %M"] + cmd, capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rss = int(re.findall(r"maxrss (\d+)", r.stderr)[-1])
    return r.stdout, r.stderr, rss


def bench_moe(moe, path, vocab, reps, threads, cold):
    ids = ",".join(str((i * 7919 + 13) % vocab) for i in range(128))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    prompt, decode, rss = [], [], 0
    for _ in range(reps):
        _, err, kb = timed([moe, "generate", "--model", path, "--prompt-ids", ids,
                            "--max-new-tokens", "65", "--ignore-eos", "--temperature", "0",
                            "--threads", str(threads)] + ([] if cold else ["--warmup"]), env)
        # "... prompt of 128 tokens + first token T s (P prompt tokens/s), then 64 tokens at D
        # tokens/s": the prompt until the first token is drawn, then the single-token steps.
        m = re.search(r"prompt of 128 tokens \+ first token [\d.]+ s \(([\d.]+) prompt tokens/s\), "
                      r"then 64 tokens at ([\d.]+) tokens/s", err)
        prompt.append(float(m.group(1)))
        decode.append(float(m.group(2)))
        rss = max(rss, kb)
    return statistics.median(prompt), statistics.median(decode), rss * 1024


def bench_llama(bin_dir, path, reps, threads):
    out, err, kb = timed([os.path.join(bin_dir, "llama-bench"), "-m", path, "-p", "128",
                          "-n", "64", "-t", str(threads), "-r", str(reps), "-o", "json"])
    prompt = decode = None
    for test in json.loads(out):
        ts = statistics.median(test["samples_ts"])
        if test["n_prompt"] == 128 and test["n_gen"] == 0:
            prompt = ts
        elif test["n_gen"] == 64 and test["n_prompt"] == 0:
            decode = ts
    return prompt, decode, kb * 1024


def read_bandwidth(threads):
    tool = os.path.join(ROOT, "build", "bench", "read_bandwidth")
    if not os.path.exists(tool):
        return None
    r = subprocess.run([tool, "2048", "5"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True)
    return float(re.search(r"([\d.]+) GB/s", r.stdout).group(1))


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("llama_bin", nargs="?", help="llama.cpp's bin directory (llama-bench)")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qwen3", action="store_true", help="also the Qwen3-30B-A3B shapes at Q4_K")
    ap.add_argument("--qwen3-llama", action="store_true",
                    help="the Qwen3-30B-A3B shapes at Q4_K as the llama architecture")
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "moe"))
    ap.add_argument("--out", default=os.path.join(HERE, "out"), help="where the GGUF files go")
    ap.add_argument("--cold", action="store_true",
                    help="time moe's first prompt of a fresh process (no --warmup)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    bw = read_bandwidth(a.threads)
    print(f"host read bandwidth: {fmt(bw, '.1f')} GB/s ({a.threads} threads, build/bench/read_bandwidth)")
    runs = [("mixtral-random", t) for t in a.types.split(",") if t]  # --types "" skips them
    if a.qwen3:
        runs.append(("qwen3-30b-a3b-random", "q4_k"))
    if a.qwen3_llama:
        runs.append(("qwen3-30b-a3b-llama-random", "q4_k"))
    rows = []
    for model, t in runs:
        config = os.path.join(HERE, "configs", model + ".json")
        path = os.path.join(a.out, f"{model}-{t}.gguf")
        if not os.path.exists(path):
            subprocess.run([a.moe, "quantize", "--random", config, path, "--type", t], check=True)
        vocab = json.load(open(config))["vocab_size"]
        size = os.path.getsize(path)
        active = active_bytes_per_token(path)
        mp, md, mrss = bench_moe(a.moe, path, vocab, a.reps, a.threads, a.cold)
        lp = ld = lrss = None
        note = ""
        if a.llama_bin:
            try:
                lp, ld, lrss = bench_llama(a.llama_bin, path, a.reps, a.threads)
            except RuntimeError as e:
                note = "llama.cpp could not load it: " + str(e).strip().splitlines()[-1][:120]
        rows.append((model, t, size, active, lp, mp, ld, md, lrss, mrss, note))
        print(f"{model} {t}: moe prompt {mp:.1f} decode {md:.1f} tokens/s; llama.cpp prompt "
              f"{fmt(lp, '.1f')} decode {fmt(ld, '.1f')} {note}", file=sys.stderr, flush=True)

    print()
    print("| model | weights | file MB | llama.cpp decode | moe decode | ratio | llama.cpp prompt "
          "(128) | moe prompt (128) | ratio | MB read per token | moe weight GB/s | of read bw "
          "| moe peak RSS MB | llama.cpp peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, t, size, active, lp, mp, ld, md, lrss, mrss, note in rows:
        gbs = active * md / 1e9
        print(f"| {model} | {t} | {size / 1e6:.0f} | {fmt(ld, '.1f')} | {md:.1f} | {ratio(md, ld)} "
              f"| {fmt(lp, '.1f')} | {mp:.1f} | {ratio(mp, lp)} | {active / 1e6:.1f} | {gbs:.1f} "
              f"| {'-' if bw is None else f'{100 * gbs / bw:.0f}%'} | {mrss / 1e6:.0f} "
              f"| {'-' if lrss is None else f'{lrss / 1e6:.0f}'} |")
    for row in rows:
        if row[-1]:
            print(f"{row[0]} {row[1]}: {row[-1]}")


if __name__ == "__main__":
    main()
