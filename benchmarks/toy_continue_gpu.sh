#!/usr/bin/env bash
# Continue a candidate of toy_candidates_gpu.sh (same warm machine) with a cosine decay, then judge and export.
#   bash benchmarks/toy_continue_gpu.sh NAME VARIANT STEPS LR
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/toy2; R=${OUT:-$W}; name=$1; variant=$2; steps=$3; lr=$4; run=${5:-${1}c}
ls -la $W/$name/runs/$name/ | tail -n 8
last=$(ls -t $W/$name/runs/$name/*.safetensors 2>/dev/null | grep -v _ema | head -1)
ema=$(ls -t $W/$name/runs/$name/*_ema.safetensors 2>/dev/null | head -1)
start=${ema:-$last}; echo "start: $start"
[ -n "$start" ] && cp $start $W/$name/base/transformer.safetensors
T="--set training.batch_size=128 --set data.caption_dropout=0.05 --set logging.progress_bar=false
   --set regularisation.ema_decay=0.999 --set data.cache_in_memory=true --set schedule.warmup_ratio=0"
date
timeout 470 python3 -m wantune.toy.pretrain --out $W/$name --clips 8192 --variant $variant --device cuda $T --use-ema \
  --set training.steps=$steps --set optimizer.lr=$lr --set saving.name=${run} > $R/${run}.log 2>&1
date; tail -n 2 $R/${run}.log
cp $W/$name/runs/${run}/metrics.jsonl $R/metrics_${run}.jsonl
python3 benchmarks/to_bf16.py $W/$name/base/transformer.safetensors $R/${run}.safetensors
timeout 100 python3 -m wantune.toy.evaluate --base $W/$name/base --concept base --clips 32 --seed 1000 --device cuda \
  2>/dev/null | tail -n 1 | tee $R/eval_${run}.json
date
