#!/usr/bin/env bash
# Every model in every command (include/moe/any_model.h): a tiny run, its Hugging Face export
# and its GGUF export give the same perplexity on the user's text and the same routing
# analysis (both decoders' routing observers); eval, analyze, route and report take a
# checkpoint; a checkpoint's analysis goes to --out (default runs/analysis/<name>) and the
# checkpoint stays untouched; generation stops at the context with one message.
# Usage: tests/any_model_cli.sh path/to/moe
set -euo pipefail
moe=$(realpath "$1")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "any_model_cli: $*" >&2; exit 1; }
cd "$dir"  # the default output directories (runs/analysis/...) land here

cat > tiny.json <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": 4, "batch_size": 2, "seq_len": 32, "eval_every": 4,
              "eval_batches": 2, "checkpoint_every": 4, "tokenizer": "byte",
              "data_dir": "$dir/data"}}
JSON
"$moe" train --config tiny.json --out run --no-progress > /dev/null 2>&1 || fail "train failed"
"$moe" convert run --to hf --out hf > /dev/null
"$moe" convert run --to gguf --out run.gguf > /dev/null
# The user's text: JSONL with two domains.
for i in $(seq 1 12); do
  echo "{\"text\": \"def f$i(x):\\n    return x * $i + 7\\n\", \"domain\": \"code\"}"
  echo "{\"text\": \"The river ran past the mill number $i, and the miller sang.\", \"domain\": \"prose\"}"
done > text.jsonl
before=$(cat hf/* run.gguf text.jsonl | md5sum)

# Perplexity: the same figures through the run's TransformerLm, the HF export and the GGUF file.
for m in run hf run.gguf; do
  "$moe" perplexity "$m" --data text.jsonl --ctx 32 --stride 8 --json "ppl_$m.json" \
    > "ppl_$m" 2> "err_$m" || fail "perplexity $m: $(cat "err_$m")"
  grep -q "^perplexity: .*/.* windows" "err_$m" || fail "no progress for $m: $(cat "err_$m")"
  grep -qE "^code +[0-9.]+ +[0-9.]+ +[0-9]+$" "ppl_$m" || fail "no code domain: $(cat "ppl_$m")"
  grep -qE "^prose " "ppl_$m" || fail "no prose domain: $(cat "ppl_$m")"
  grep -q '"perplexity"' "ppl_$m.json" || fail "no JSON for $m"
done
head -4 ppl_run > a; head -4 ppl_hf > b
cmp -s a b || fail "run and HF export differ: $(cat a) / $(cat b)"
head -4 ppl_run.gguf > c
cmp -s a c || fail "run and GGUF export differ: $(cat a) / $(cat c)"
# Disjoint windows (stride = ctx) score the same tokens with less context.
"$moe" perplexity hf --data text.jsonl --ctx 32 --stride 32 --no-progress > ppl_disjoint 2> /dev/null
[[ $(head -1 ppl_disjoint | grep -o 'over [0-9]* tokens') == $(head -1 ppl_hf | grep -o 'over [0-9]* tokens') ]] ||
  fail "disjoint windows scored other tokens: $(head -1 ppl_disjoint)"

# eval: a run's validation split; any model on --data; a checkpoint without --data is refused.
"$moe" eval run --batches 2 2> /dev/null | grep -q "validation loss" || fail "eval of the run"
"$moe" eval hf --data text.jsonl --ctx 32 2> /dev/null > ev || fail "eval of the HF export"
grep -q "loss" ev || fail "eval printed: $(cat ev)"
if "$moe" eval hf 2> err; then fail "eval of a checkpoint without --data accepted"; fi
grep -q "give --data" err || fail "unexpected error: $(cat err)"
[[ $(wc -l < err) -eq 1 ]] || fail "not one line: $(cat err)"

# analyze: the run and its HF export route alike (trained and random router).
"$moe" analyze run --data text.jsonl --seq-len 16 --out a_run > an_run 2> /dev/null
"$moe" analyze hf --data text.jsonl --seq-len 16 > an_hf 2> /dev/null
for f in analysis.json analysis_domains.csv analysis_random_router.json \
         analysis_random_router_domains.csv analysis_coactivation.csv; do
  [[ -s "runs/analysis/hf/$f" ]] || fail "analyze hf wrote no runs/analysis/hf/$f"
done
for f in analysis_domains.csv analysis_classes.csv analysis_coactivation.csv \
         analysis_random_router_domains.csv; do
  cmp -s "a_run/$f" "runs/analysis/hf/$f" || fail "$f differs between the run and its HF export"
done
grep -q "baseline domain" an_hf || fail "no baseline column: $(cat an_hf)"
"$moe" analyze run.gguf --data text.jsonl --seq-len 16 --out a_gguf --no-baseline > /dev/null 2>&1
cmp -s a_run/analysis_domains.csv a_gguf/analysis_domains.csv || fail "GGUF routes otherwise"
[[ ! -e a_gguf/analysis_random_router.json ]] || fail "--no-baseline wrote a baseline"
if "$moe" analyze hf 2> err; then fail "analyze of a checkpoint without --data accepted"; fi
grep -q "give --data" err || fail "unexpected error: $(cat err)"
if "$moe" analyze hf --data text.jsonl --untrained 2> err; then fail "--untrained of a checkpoint"; fi
grep -q "untrained" err || fail "unexpected error: $(cat err)"

# report: of the checkpoint's analysis directory, with its random-router baseline.
"$moe" report hf > rep || fail "report of the HF export"
grep -q "runs/analysis/hf/report.html" rep || fail "report printed: $(cat rep)"
grep -q 'data-chart="mi_domain"' runs/analysis/hf/report.html || fail "no MI chart"
grep -q "random router" runs/analysis/hf/report.html || fail "no random-router baseline"
"$moe" report a_run > /dev/null || fail "report of an analysis directory"
[[ -s a_run/report.html ]] || fail "no a_run/report.html"

# route: a checkpoint's routers on a text.
"$moe" route hf --text "def f(x): return x" --color never > rt || fail "route of the HF export"
grep -q "^layer 0: " rt && grep -q "^layer 1: " rt || fail "route printed: $(cat rt)"
"$moe" route run --text "def f(x): return x" --color never > rt_run
cmp -s <(tail -n +2 rt) <(tail -n +2 rt_run) || fail "route differs between the run and its export"

# generate: past the context it stops there with one message and succeeds.
for m in run hf; do
  "$moe" generate "$m" --prompt "Hello" --max-new-tokens 100 --ignore-eos > gen 2> err ||
    fail "long generation of $m failed: $(cat err)"
  grep -q "fill the context of 64 positions" err || fail "no context message for $m: $(cat err)"
done

[[ $(cat hf/* run.gguf text.jsonl | md5sum) == "$before" ]] || fail "an input was modified"
echo "any_model_cli: ok"
