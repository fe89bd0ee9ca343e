#!/usr/bin/env bash
# `moe train --data` on the user's own text, end to end: a directory with subfolders as
# domains trains and evaluates, the directory stays byte-identical (contents and mtimes), the
# cache is reused, then rebuilt when a file changes, and bad input is one error line.
# Usage: tests/user_data_cli.sh path/to/moe
set -euo pipefail
moe=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "user_data_cli: $*" >&2; exit 1; }

mkdir -p "$dir/text/poems" "$dir/text/code"
for i in $(seq 1 30); do
  printf 'Roses %d are red,\nviolets are blue.\n\nSugar is sweet %d.\n' "$i" "$i" > "$dir/text/poems/p$i.txt"
  printf 'def f%d(x):\n    return x * %d\n' "$i" "$i" > "$dir/text/code/c$i.md"
done
printf '{"text": "a line of JSON %d", "domain": "json"}\n' $(seq 1 20) > "$dir/text/lines.jsonl"
echo 'print("skipped")' > "$dir/text/skip.py"
snapshot() { (cd "$dir/text" && find . -printf '%p %s %T@\n' | sort && find . -type f | sort | xargs md5sum); }
snapshot > "$dir/before"

# The config sits in its own folder: its relative data_dir is relative to that folder.
mkdir -p "$dir/conf"
cat > "$dir/conf/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": 3, "batch_size": 2, "seq_len": 16, "eval_every": 3,
              "eval_batches": 2, "checkpoint_every": 3, "tokenizer": "byte",
              "data_dir": "cache"}}
JSON
cd "$dir"  # another working directory than the config's
"$moe" train --config conf/tiny.json --data text --valid-fraction 0.2 --out run --no-progress \
  > out 2> log || fail "train failed: $(cat log)"
grep -q "skipped 1 other files (1 .py)" log || fail "no skipped-files line: $(cat log)"
grep -q "building cache $dir/conf/cache/user/" log || fail "cache not under the config's folder: $(cat log)"
grep -q "MB/s.*peak resident memory" log || fail "no speed/memory line: $(cat log)"
grep -q "\"data\": \"$dir/text\"" run/config.json || fail "config.json does not record the data"
grep -q '"valid_fraction": 0.2' run/config.json || fail "config.json does not record the split"
snapshot > after
cmp -s before after || fail "the input directory changed: $(diff before after)"

"$moe" eval run > eval 2> elog || fail "eval failed: $(cat elog)"
grep -q "token cache is up to date" elog || fail "eval did not reuse the validation split: $(cat elog)"
for d in code json poems; do grep -q "^$d " eval || fail "eval lacks domain $d: $(cat eval)"; done

"$moe" train --config conf/tiny.json --data text --valid-fraction 0.2 --out run2 --no-progress \
  > out 2> log
grep -q "is up to date" log || fail "cache not reused: $(cat log)"
grep -q "scanned" log && fail "input re-read although unchanged: $(cat log)"

echo "Roses are red, and this poem is longer now." >> text/poems/p3.txt
"$moe" train --config conf/tiny.json --data text --valid-fraction 0.2 --out run3 --no-progress \
  > out 2> log
grep -q "poems/p3.txt changed" log || fail "change not detected: $(cat log)"

# Bad input: one error line naming the file, nothing built.
printf 'caf\xe9\n' > latin1.txt
: > empty.txt
printf 'a\0b' > binary.txt
for f in latin1.txt empty.txt binary.txt; do
  if "$moe" train --config conf/tiny.json --data "$f" --out "bad_$f" 2> err; then fail "$f accepted"; fi
  [[ $(grep -c "^moe: error" err) -eq 1 ]] || fail "$f: $(cat err)"
  grep "^moe: error" err | grep -q "$dir/$f" || fail "$f: error does not name the file: $(cat err)"
  grep "^moe: error" err | grep -q "\.cpp:" && fail "$f: error has a source location: $(cat err)"
done
echo "user_data_cli: ok"
