#!/usr/bin/env bash
# Several `wantune bench learn` runs side by side on one GPU (a LoRA recipe sweep on the shipped toy base), each
# line of the file "NAME CONCEPT ARGS..." one process; results appended to $OUT/sweep.jsonl as
# {"run": NAME, "args": ..., result...}; the LoRA files to $OUT/loras/NAME.safetensors
# (tarred into $OUT/loras.tar when OUT is set: the device returns few files).
#   bash benchmarks/toy_sweep_gpu.sh RUNS_FILE [SECONDS_PER_RUN]            start, wait, collect (one call)
#   MODE=start bash benchmarks/toy_sweep_gpu.sh RUNS_FILE [SECONDS_PER_RUN]  start detached (setsid) and return
#   MODE=collect bash benchmarks/toy_sweep_gpu.sh RUNS_FILE [WAIT_SECONDS]   wait for the detached runs, collect
# EVAL_SEEDS="6000 7000" (EVAL_CLIPS, default 32) also judges each collected LoRA on those prompt sets, the concept's
# prompts and the base world's, and the base model alone on the base world's: $OUT/evals.jsonl, one line each.
# The detached runs outlive the device call that started them (the machine stays while later calls come), so a
# sweep longer than one call's 10 minutes is start + collect [+ collect].
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=$PWD/out/sweep; R=${OUT:-$W}; mkdir -p $W $R; LIMIT=${2:-480}; MODE=${MODE:-all}
runs() { grep -v '^\s*#' "$1" | grep -v '^\s*$'; }
date
if [ "$MODE" != collect ]; then
  pkill -f "bench learn"; sleep 1
  while read -r name concept args; do
    rm -f $W/$name.json $W/$name.done
    setsid bash -c "timeout $LIMIT python3 -m wantune.cli bench learn --concept $concept --out $W/$name \
      --eval-clips 16 --device cuda --json $args > $W/$name.json 2> $W/$name.err; touch $W/$name.done" \
      < /dev/null > /dev/null 2>&1 &
  done < <(runs "$1")
  [ "$MODE" = start ] && { sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; exit 0; }
fi
deadline=$(( $(date +%s) + ${2:-580} ))
while :; do
  left=0; while read -r name rest; do [ -e $W/$name.done ] || left=$((left + 1)); done < <(runs "$1")
  [ $left = 0 ] && break
  [ "$MODE" = collect ] && [ $(date +%s) -ge $deadline ] && { echo "$left runs still going"; break; }
  sleep 10
done
date
cp $W/*.err $R/ 2>/dev/null; : > $R/sweep.jsonl; mkdir -p $R/loras  # $OUT returns a few files: tar it there
for d in $W/*/; do  # the EMA weights when kept (what the bench judged)
  f=$(ls $d*/runs/*/*_v1_ema.safetensors 2>/dev/null | head -1); [ -n "$f" ] || f=$(ls $d*/runs/*/*_v1.safetensors 2>/dev/null | head -1)
  [ -n "$f" ] && cp "$f" $R/loras/$(basename $d).safetensors
done
while read -r name concept args; do
  [ -e $W/$name.done ] || { echo "$name running: $(grep -c . $W/$name/*/runs/*/metrics.jsonl 2>/dev/null | tail -1)"; continue; }
  python3 - "$W/$name.json" "$name" "$args" "$R/sweep.jsonl" <<'PY' || { echo "$name failed"; tail -n 3 $W/$name.err; }
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
open(sys.argv[4], "a").write(json.dumps({"run": sys.argv[2], "args": sys.argv[3], **r}) + "\n")
runs = {k: (r[k]["adherence_with_lora"], r[k]["preservation_drop"], r[k]["last_loss"]) for k in ("no_dop", "dop") if k in r}
print(sys.argv[2], r["concept"], r["adherence_without_lora"], runs, r["seconds"])
PY
done < <(runs "$1")
if [ -n "$OUT" ]; then tar cf $R/loras.tar -C $R loras; fi
if [ -n "$EVAL_SEEDS" ]; then
E="python3 -m wantune.toy.evaluate --base src/wantune/toy/assets/base --clips ${EVAL_CLIPS:-32} --device ${EVAL_DEVICE:-cuda}"
: > $R/evals.jsonl
judge() {  # NAME CONCEPT SEED [LORA:STRENGTH]
  $E --concept $2 --seed $3 ${4:+--lora $4} 2>/dev/null | tail -n 1 | python3 -c "import json, sys
r = json.load(sys.stdin); print(json.dumps({'run': '$1', 'concept': '$2', 'seed': $3, 'adherence': r['adherence'], 'passed': r['passed']}))" >> $R/evals.jsonl
}
for seed in $EVAL_SEEDS; do judge base base $seed & done; wait
while read -r name concept args; do
  [ -e $R/loras/$name.safetensors ] || continue
  s=$(echo "$args" | grep -o -- '--strength [0-9.]*' | cut -d' ' -f2); s=${s:-$(python3 -c "
from wantune.toy.spec import load_concept; print(load_concept('$concept').recipe.strength or 1.0)")}
  for seed in $EVAL_SEEDS; do
    judge $name $concept $seed $R/loras/$name.safetensors:$s & judge $name base $seed $R/loras/$name.safetensors:$s &
  done
done < <(runs "$1")
wait  # every judgement at once: each is one CPU thread and a sliver of the GPU
cat $R/evals.jsonl
fi
if [ -n "$OUT" ]; then rm -rf $R/loras; fi
