#!/usr/bin/env bash
# One device call: base-world data + cache, then toy transformer candidates side by side (NAME:VARIANT:LR ...),
# each for SECONDS of wall time (constant LR), then each one's mean loss over its last 50 steps.
#   bash benchmarks/toy_candidates_gpu.sh CLIPS SECONDS NAME:VARIANT:LR...
# VARIANT is any toy variant in wantune.models.variants. The architecture search of toy_base.json ran
#   8192 320 p1:toy-t2v-p1:6e-4 l:toy-t2v-l:3e-4 l6:toy-t2v-l:6e-4
# with two temporary variants: toy-t2v-p1 (toy-t2v of then, dim 128, 4 layers, with patch_size (1, 1, 1)) and
# toy-t2v-l (dim 256, ffn 1024, 8 heads, 6 layers), which then became toy-t2v.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/toy2; R=${OUT:-$W}; mkdir -p $W
clips=$1; secs=$2; shift 2
T="--set training.batch_size=128 --set data.caption_dropout=0.05 --set logging.progress_bar=false
   --set regularisation.ema_decay=0.999 --set saving.every_steps=500 --set saving.keep_last=1
   --set schedule.name=constant --set schedule.warmup_ratio=0 --set data.cache_in_memory=true"
first=${1%%:*}
date
python3 -m wantune.toy.pretrain --out $W/$first --clips $clips --workers 14 --variant $(echo $1 | cut -d: -f2) \
  --vae src/wantune/toy/assets/base/vae.safetensors --device cuda $T --set training.steps=2 --set saving.name=warm \
  > $R/prep.log 2>&1; tail -n 3 $R/prep.log
date
for job in "$@"; do
  IFS=: read name variant lr <<< "$job"
  if [ $name != $first ]; then
    mkdir -p $W/$name && ln -sfn $W/$first/data $W/$name/data && ln -sfn $W/$first/cache $W/$name/cache
    cp -r $W/$first/base $W/$name/base
  fi
  timeout $secs python3 -m wantune.toy.pretrain --out $W/$name --clips $clips --variant $variant --device cuda $T \
    --set training.steps=100000 --set optimizer.lr=$lr --set saving.name=$name > $R/$name.log 2>&1 &
done
wait
date
# The runs are stopped by `timeout`, so they end without a final model file (the periodic saves are training
# state under runs/NAME/checkpoints/): candidates are compared by their loss; the winner is then trained to the
# end with toy_continue_gpu.sh / make_toy_base.sh.
for job in "$@"; do
  IFS=: read name variant lr <<< "$job"
  cp $W/$name/runs/$name/metrics.jsonl $R/metrics_$name.jsonl
  python3 -c "import json,sys; m=[json.loads(l) for l in open(sys.argv[1])]; l=[x['loss'] for x in m[-50:]]; \
print(sys.argv[2], 'steps', m[-1]['step'], 'loss_last_50', round(sum(l)/len(l), 4))" $R/metrics_$name.jsonl $name
done
date
