#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, ASan and UBSan in build-fuzz/ and runs
# each for SECONDS (default 60) from a seed corpus of the committed fixtures, tests/fuzz/seeds and
# tests/fuzz/regressions, copied into build-fuzz/fuzz-corpus/. Prints one line per target
# (executions, exec/s, corpus size, findings) and exits non-zero on any crash, escaped
# exception, sanitizer report, leak, timeout or out-of-memory, leaving the input in
# build-fuzz/findings/ (docs/reliability.md "Fuzzing").
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (TARGET: safetensors, gguf, ...; default all)
#        JOBS=N sets the build's parallelism (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
[[ $# -gt 0 ]] && shift
scripts/setup.sh
dir=build-fuzz
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_FUZZ=ON -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF)
if [[ -f "$dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$dir" "${flags[@]}" >/dev/null
else
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  CC=clang CXX=clang++ cmake -S . -B "$dir" "${generator[@]}" "${flags[@]}" >/dev/null
fi
if ! grep -q '^MOE_HAVE_LIBFUZZER:INTERNAL=1' "$dir/CMakeCache.txt"; then
  echo "fuzz: clang with libFuzzer is not available (scripts/setup.sh installs it)" >&2
  exit 1
fi
start=$(date +%s)
cmake --build "$dir" -j "${JOBS:-$(nproc)}" --target fuzz_all
echo "fuzz: build of the fuzz targets took $(($(date +%s) - start)) s"

# Longest input per target (seeds above it are not copied) and the JSON dictionary for the
# targets that read JSON.
declare -A max_len=([safetensors]=65536 [safetensors_index]=16384 [gguf]=16384 [gguf_tokenizer]=65536 [config]=8192
                    [hf_tokenizer]=65536 [sentencepiece]=65536 [corpus_jsonl]=8192)
declare -A dict=([safetensors]=json [safetensors_index]=json [config]=json [hf_tokenizer]=json
                 [corpus_jsonl]=json)
targets=(safetensors safetensors_index gguf gguf_tokenizer config hf_tokenizer sentencepiece corpus_jsonl)
[[ $# -gt 0 ]] && targets=("$@")

export OMP_NUM_THREADS=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p "$dir/findings" "$dir/fuzz-logs"
failed=()
for t in "${targets[@]}"; do
  name="fuzz_$t"
  exe="$dir/tests/fuzz/$name"
  [[ -x "$exe" && -n "${max_len[$t]:-}" ]] || { echo "fuzz: unknown target $t" >&2; exit 2; }
  corpus="$dir/fuzz-corpus/$name"
  rm -rf "$corpus"
  mkdir -p "$corpus"
  while read -r src; do
    [[ -n "$src" ]] || continue
    find "$src" -type f -size -$((max_len[$t] + 1))c -print0 |
      while IFS= read -r -d '' f; do cp "$f" "$corpus/$(echo "${f#"$PWD"/}" | tr / _)"; done
  done < <(cat "$dir/tests/fuzz/${name}_seeds.txt"; echo "$PWD/tests/fuzz/regressions/$name")
  seeds=$(find "$corpus" -type f | wc -l)
  opts=(-max_total_time="$secs" -max_len="${max_len[$t]}" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$dir/findings/$name-")
  [[ -n "${dict[$t]:-}" ]] && opts+=(-dict="tests/fuzz/${dict[$t]}.dict")
  marker="$dir/fuzz-logs/$name.start"
  touch "$marker"
  log="$dir/fuzz-logs/$name.log"
  set +e
  "$exe" "${opts[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  final_stat() { grep -o "stat::$1: *[0-9]*" "$log" | awk '{print $2}' | tail -1; }
  mapfile -t found < <(find "$dir/findings" -type f -name "$name-*" -newer "$marker")
  n=${#found[@]}
  ((rc != 0 && n == 0)) && n=1
  printf 'fuzz: %-24s %10s executions %7s exec/s  corpus %4s (%s seeds)  %d findings\n' \
    "$name" "$(final_stat number_of_executed_units)" "$(final_stat average_exec_per_sec)" \
    "$(find "$corpus" -type f | wc -l)" "$seeds" "$n"
  if ((n > 0)); then
    failed+=("$name")
    echo "---- $name: what went wrong, then the last lines of $log"
    grep -m 3 -E 'what\(\):|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log" || true
    tail -n 30 "$log"
    for f in "${found[@]}"; do
      echo "---- finding saved as $f"
      echo "  replay:         $exe $f"
      echo "  as a regression: cp $f tests/fuzz/regressions/$name/<what-it-was>  (ctest then replays it)"
    done
  fi
done
if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: findings in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs} s each, 0 findings"
