#!/usr/bin/env bash
# One device call: base-world data + cache, then toy transformer candidates side by side (NAME:VARIANT:LR ...),
# each for SECONDS of wall time (constant LR, EMA), then each one's EMA weights judged on 32 base prompts.
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
for job in "$@"; do
  IFS=: read name variant lr <<< "$job"
  ema=$(ls -t $W/$name/runs/$name/*_ema.safetensors | head -1); echo "$name: $ema"
  python3 -c "import json,sys; m=[json.loads(l) for l in open(sys.argv[1])]; l=[x['loss'] for x in m[-500:]]; \
print('steps', m[-1]['step'], 'loss_last_500', round(sum(l)/len(l), 4))" $W/$name/runs/$name/metrics.jsonl
  cp $ema $W/$name/base/transformer.safetensors
  cp $W/$name/runs/$name/metrics.jsonl $R/metrics_$name.jsonl
  timeout 60 python3 -m wantune.toy.evaluate --base $W/$name/base --concept base --clips 32 --seed 1000 --device cuda \
    2>/dev/null | tail -n 1 | tee $R/eval_$name.json
  python3 -c "import sys,torch; from safetensors.torch import load_file, save_file; sd=load_file(sys.argv[1]); \
save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, sys.argv[2])" $ema $R/$name.safetensors
done
date
