#!/usr/bin/env bash
# Crash safety of `moe train`: a tiny run that checkpoints every 3 steps is killed with SIGKILL
# several times (during startup, after a random step, and just as a checkpoint is being
# written) and resumed each time. After every kill: the last checkpoint loads and training goes
# on from its step, the temporary files of killed writes are gone once a later save has
# succeeded, and metrics.jsonl holds every step once and in order. At the end the run's weights
# and checkpoint equal, byte for byte, those of the same run without interruption.
# The kill points come from a seeded RNG (bash's RANDOM); the seed is printed.
# Usage: tests/crash_resume_test.sh path/to/moe [seed]
set -euo pipefail
moe=$1
seed=${2:-1206}
RANDOM=$seed
dir=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill -9 "$pid" 2> /dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "crash test (seed $seed): $*" >&2
  [[ -f $dir/log ]] && sed 's/^/  log: /' "$dir/log" >&2
  exit 1
}
start=$SECONDS
echo "crash test: seed $seed"
steps=120  # headroom: a step of this model takes ~6 ms, and the kills wait up to 30 ms past a step
cat > "$dir/tiny.json" << JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 64, "intermediate_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": $steps, "batch_size": 4, "seq_len": 32, "eval_every": 10,
              "eval_batches": 2, "checkpoint_every": 3, "tokenizer": "byte",
              "data_dir": "$dir/data"}}
JSON

# The uninterrupted run (it also prepares the corpus the other runs share).
"$moe" train --config "$dir/tiny.json" --out "$dir/ref" --no-progress > "$dir/log" 2>&1 ||
  fail "the uninterrupted run failed"

run=$dir/run
# The step of run/checkpoint.safetensors (from its header's metadata), or -1 without one.
checkpoint_step() {
  if [[ ! -f $run/checkpoint.safetensors ]]; then
    echo -1
    return
  fi
  grep -ao '"step":"[0-9]*"' < <(head -c 65536 "$run/checkpoint.safetensors") | sed -n 1p |
    tr -dc 0-9
  echo
}
# The steps of metrics.jsonl's complete lines of kind $1 ("loss" or "val_loss"), one a line.
metric_steps() {
  grep "\"$1\":.*}\$" "$run/metrics.jsonl" 2> /dev/null | grep -o '"step":[0-9]*' |
    tr -dc '0-9\n' || true
}
# Training steps 1..n each once and in order (n >= $1), validation steps each once.
check_metrics() {
  metric_steps loss > "$dir/steps"
  local n
  n=$(wc -l < "$dir/steps")
  seq 1 "$n" | cmp -s - "$dir/steps" ||
    fail "metrics.jsonl: training steps are not 1..$n once each: $(tr '\n' ' ' < "$dir/steps")"
  ((n >= $1)) || fail "metrics.jsonl: $n training steps, but the checkpoint is at step $1"
  [[ -z $(metric_steps val_loss | uniq -d) ]] ||
    fail "metrics.jsonl: a validation step twice: $(metric_steps val_loss | tr '\n' ' ')"
  metric_count=$n
}
# Waits until the training log says that startup is over (the metrics were truncated).
wait_for_training() {
  while kill -0 "$pid" 2> /dev/null && ! grep -q '^model: ' "$dir/log"; do sleep 0.01; done
}

# The kills, in order: "start" (0-400 ms after launch: data loading, checkpoint loading, the
# metrics truncation), "step" (0-30 ms after the metrics line of a random step 1-8 steps past
# the checkpoint) and "write" (as soon as this process's checkpoint temporary file appears;
# retried until one is left behind, at most 5 times).
plan=(start step write step write step)
kills=0 during_write=0 resumes=0
for mode in "${plan[@]}"; do
  tries=1
  if [[ $mode == write ]]; then tries=5; fi
  for ((try = 0; try < tries; ++try)); do
    before=$(checkpoint_step)
    ((before < steps)) || fail "the run finished before the planned kills"
    if ((before >= 0)); then
      args=(--out "$run" --resume)
      resumes=$((resumes + 1))
    else
      args=(--config "$dir/tiny.json" --out "$run")
    fi
    "$moe" train "${args[@]}" --no-progress > "$dir/log" 2>&1 &
    pid=$!
    case $mode in
      start) sleep "0.$(printf '%03d' $((RANDOM % 400)))" ;;
      step)
        # 1-8 steps past the checkpoint, and past the first one (step 3): later kills resume.
        target=$((before < 3 ? 3 : before))
        target=$((target + 1 + RANDOM % 8))
        delay=$((RANDOM % 30))
        wait_for_training
        # Once training runs, metrics.jsonl holds steps 1..n: wait for n >= target.
        while kill -0 "$pid" 2> /dev/null && (($(metric_steps loss | wc -l) < target)); do
          sleep 0.005
        done
        sleep "0.$(printf '%03d' "$delay")"
        ;;
      write)
        wait_for_training
        while kill -0 "$pid" 2> /dev/null &&
          ! compgen -G "$run/checkpoint.safetensors.tmp.$pid.*" > /dev/null; do :; done
        ;;
    esac
    kill -9 "$pid" 2> /dev/null || fail "moe train ended before the $mode kill"
    status=0
    { wait "$pid"; } 2> /dev/null || status=$?  # (without bash's "Killed" line)
    ((status == 137)) || fail "moe train exited with $status before the $mode kill"
    kills=$((kills + 1))
    # The checkpoint it resumed from was loaded, when it got that far.
    if ((before >= 0)) && grep -q '^resumed ' "$dir/log"; then
      grep -q "^resumed .* at step $before\$" "$dir/log" ||
        fail "resumed at another step than the checkpoint's $before"
    fi
    after=$(checkpoint_step)
    left_behind=0
    if compgen -G "$run/checkpoint.safetensors.tmp.$pid.*" > /dev/null; then left_behind=1; fi
    during_write=$((during_write + left_behind))
    # Once this process has saved, no temporary of an earlier (dead) writer is left.
    if ((after > before)); then
      for f in "$run"/{checkpoint,model}.safetensors.tmp.*; do
        if [[ -e $f && $f != *.tmp.$pid.* ]]; then fail "stale temporary file after a save: $f"; fi
      done
    fi
    check_metrics "$((after < 0 ? 0 : after))"
    note=
    if ((left_behind)); then note=", during a checkpoint write"; fi
    echo "kill $kills ($mode): checkpoint step $before -> $after," \
      "metrics to step $metric_count$note"
    pid=
    if ((left_behind)); then break; fi
  done
done

# The last resume runs to the end.
before=$(checkpoint_step)
"$moe" train --out "$run" --resume --no-progress > "$dir/log" 2>&1 || fail "the last resume failed"
resumes=$((resumes + 1))
grep -q "^resumed .* at step $before\$" "$dir/log" || fail "did not resume at step $before"
check_metrics "$steps"
((metric_count == steps)) || fail "metrics.jsonl has $metric_count training steps, not $steps"
temps=$(find "$run" -name '*.tmp.*' | wc -l)
((temps == 0)) || fail "temporary files left: $(find "$run" -name '*.tmp.*')"
((during_write >= 1)) || fail "no kill landed during a checkpoint write"
for f in model.safetensors checkpoint.safetensors; do
  cmp -s "$dir/ref/$f" "$run/$f" || fail "$f differs from the uninterrupted run's"
done
echo "crash test: $kills kills ($during_write during a checkpoint write), $resumes resumes," \
  "$temps temp files left, metrics steps 1..$steps unique; final weights equal the" \
  "uninterrupted run's (seed $seed, $((SECONDS - start)) s)"
