#!/usr/bin/env bash
# A cross-weighted pre-training stage for the toy base (session 10): the shipped transformer continued on the base
# world plus extra cross clips (`wantune.toy.pretrain --focus shape=cross:N`), two candidates side by side on one
# GPU; each judged on base-world prompts (seeds 1000 and 2000, 32 each: the sets that chose the shipped base) and on
# 32 cross prompts; the better one by base-world adherence replaces src/wantune/toy/assets/base/transformer.safetensors
# in this (device) copy of the tree, so a sweep started next uses it.
#   MODE=start bash benchmarks/toy_base_focus_gpu.sh      start both candidates detached and return
#   MODE=finish bash benchmarks/toy_base_focus_gpu.sh     wait, judge, pick; $OUT: transformer_{a,b}.safetensors,
#                                                         focus_evals.jsonl, pretrain logs
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/focus; R=${OUT:-$W}; mkdir -p $W $R
# name  focus-clips  steps  lr   (batch 128, EMA 0.999, cosine, as the shipped stages)
CANDIDATES="a 2048 1200 1.5e-4
b 4096 1600 2e-4"
T="--set training.batch_size=128 --set data.caption_dropout=0.05 --set logging.progress_bar=false"
T="$T --set regularisation.ema_decay=0.999 --set data.cache_in_memory=true --set schedule.warmup_ratio=0 --use-ema"
date
if [ "$MODE" = start ]; then
  pkill -f wantune.toy.pretrain; sleep 1
  while read -r name clips steps lr; do
    rm -rf $W/$name; mkdir -p $W/$name/base; cp -r src/wantune/toy/assets/base/. $W/$name/base/
    setsid bash -c "python3 -m wantune.toy.pretrain --out $W/$name --clips 8192 --workers 7 --device cuda $T \
      --focus shape=cross:$clips --set training.steps=$steps --set optimizer.lr=$lr --set saving.name=stage5 \
      > $W/$name.log 2>&1; touch $W/$name.done" < /dev/null > /dev/null 2>&1 &
  done <<< "$CANDIDATES"
  sleep 30; tail -n 2 $W/*.log; exit 0
fi
while [ $(ls $W/*.done 2>/dev/null | wc -l) -lt 2 ]; do sleep 5; done
date
: > $R/focus_evals.jsonl
E="python3 -m wantune.toy.evaluate --clips 32 --device cuda"
judge() {  # NAME BASE SEED
  $E --base $2 --concept base --seed $3 2>/dev/null | tail -n 1 | python3 -c "import json, sys
r = json.load(sys.stdin); print(json.dumps({'run': '$1', 'seed': $3, 'adherence': r['adherence'], 'passed': r['passed'],
    'shape': r['adherence_by_option']['shape']}))" >> $R/focus_evals.jsonl
}
for name in a b; do
  tail -n 3 $W/$name.log; cp $W/$name.log $R/
  python3 benchmarks/to_bf16.py $W/$name/base/transformer.safetensors
  cp $W/$name/base/transformer.safetensors $R/transformer_$name.safetensors
done
for seed in 1000 2000 6000 7000; do
  judge shipped src/wantune/toy/assets/base $seed & judge a $W/a/base $seed & judge b $W/b/base $seed &
done; wait
cat $R/focus_evals.jsonl
best=$(python3 - $R/focus_evals.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
score = {n: sum(r["adherence"] for r in rows if r["run"] == n and r["seed"] in (1000, 2000)) for n in ("shipped", "a", "b")}
print(max(score, key=score.get))
PY
)
echo "best: $best"
[ "$best" != shipped ] && cp $W/$best/base/transformer.safetensors src/wantune/toy/assets/base/transformer.safetensors
date
