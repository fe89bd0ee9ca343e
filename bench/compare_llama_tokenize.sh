#!/usr/bin/env bash
# Our GGUF tokenizer reader against llama.cpp's on the same files (issue 19):
#   bench/compare_llama_tokenize.sh LLAMA_TOKENIZE [OUT_DIR]
# LLAMA_TOKENIZE is llama.cpp's llama-tokenize (built outside this repository). Builds
# bench/gguf_tokenizer_files in $MOE_BUILD_DIR (default build), which writes vocabulary-only
# GGUFs of each tokenizer kind and our ids for a text set (ASCII, contractions, code, CJK, emoji,
# leading/trailing spaces, newlines, Unicode spaces, special and user-defined tokens in text),
# then runs llama-tokenize --ids --no-bos on each text (--no-parse-special for the sentencepiece
# files) and prints, per file, how many texts give identical ids, and every difference.
set -euo pipefail
cd "$(dirname "$0")/.."
llama_tokenize=${1:?usage: bench/compare_llama_tokenize.sh LLAMA_TOKENIZE [OUT_DIR]}
out=${2:-runs/compare-llama-tokenize}
build=${MOE_BUILD_DIR:-build}
cmake --build "$build" --target gguf_tokenizer_files >/dev/null
mkdir -p "$out"
/usr/bin/python3 - "$llama_tokenize" "$out" "$build/bench/gguf_tokenizer_files" <<'PY'
import ast, json, os, subprocess, sys
tok, out, files = sys.argv[1:4]
texts = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've said DON'T and we'd go",
    "def route(x):\n    if x > 0:\n        return [i * 2 for i in range(10)]\n\treturn None\n",
    "混合专家模型在中央处理器上运行。日本語のテキストも。한국어 문장",
    "emoji 🙂 family 👨\u200d👩\u200d👧 flag 🇩🇪 done",
    "   three leading spaces and two trailing  ",
    " one leading space",
    "\n\nnewlines\r\n\r\nend\n",
    "digits 1234567 and 3.14159, 2026-12-06",
    "punctuation!!! ... ??? --- (([{}])) <tag> a/b\\c",
    "Grüße, café, naïve, Ελληνικά, русский текст",
    "tabs\tand\t\tspaces    mixed \t end",
    "x",
    "<|im_start|>user\nhello<|im_end|>\n",
    "text<|endoftext|>more <|padding|>",
    "tokens_USER_here and <s> </s>",
    "unicode\u00a0nbsp\u2003em\u3000ideographic space",
    "the quick brown fox jumps over the lazy dog 17",
]
texts_path = os.path.join(out, "texts.json")
json.dump(texts, open(texts_path, "w"))
ours = json.loads(subprocess.run([files, "tests/fixtures", texts_path, out], check=True,
                                 capture_output=True, text=True).stdout)
total_same = total = 0
for name, r in ours.items():
    same, diffs = 0, []
    for i, t in enumerate(texts):
        path = os.path.join(out, f"text{i}.txt")
        open(path, "wb").write(t.encode())
        args = [tok, "-m", r["path"], "-f", path, "--ids", "--no-bos", "--log-disable"]
        if r["spm"]:
            args.append("--no-parse-special")
        p = subprocess.run(args, capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if l.startswith("[")]
        if p.returncode != 0 or not lines:
            diffs.append(f"  text {i}: llama-tokenize failed: {p.stderr.strip()[-200:]}")
            continue
        theirs = ast.literal_eval(lines[-1])
        if theirs == r["ids"][i]:
            same += 1
        else:
            diffs.append(f"  text {i} {t!r}:\n    ours  {r['ids'][i]}\n    llama {theirs}")
    total_same += same
    total += len(texts)
    print(f"{name}: {same}/{len(texts)} texts identical")
    for d in diffs:
        print(d)
print(f"all: {total_same}/{total}")
PY
