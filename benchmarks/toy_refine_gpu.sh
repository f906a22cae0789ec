#!/usr/bin/env bash
# One device call, from the shipped toy base (src/wantune/toy/assets/base), side by side:
#  1. the VAE's decoder trained further at two learning rates (--decoder-only: the encoder, so the latent space,
#     the caches and the transformer trained on them, stay valid): the VAE turned crosses into 4-point stars;
#  2. the transformer continued on 8192 base-world clips (cosine decay from LR, EMA kept).
# Then the base model's adherence (GPU, 32 prompts) with each new part. Results and bf16 weights in $OUT.
#   bash benchmarks/toy_refine_gpu.sh STEPS LR VAE_MINUTES
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/refine; R=${OUT:-$W}; S=$PWD/src/wantune/toy/assets/base; steps=$1; lr=$2; minutes=$3
mkdir -p $W/pre && cp -r $S $W/pre/base
date
V="python3 -m wantune.toy.train_vae --steps 100000 --pool 1500 --batch-size 16 --eval-clips 50 --device cuda
   --short-fraction 0 --decoder-only --init $S/vae.safetensors --object-weight 12 --max-minutes $minutes"
timeout 440 $V --out $W/vaeA --lr 3e-4 > $R/vaeA.log 2>&1 &
timeout 440 $V --out $W/vaeB --lr 8e-4 > $R/vaeB.log 2>&1 &
T="--set training.batch_size=128 --set data.caption_dropout=0.05 --set logging.progress_bar=false
   --set regularisation.ema_decay=0.999 --set data.cache_in_memory=true --set schedule.warmup_ratio=0 --use-ema"
timeout 440 python3 -m wantune.toy.pretrain --out $W/pre --clips 8192 --workers 8 --device cuda $T \
  --set training.steps=$steps --set optimizer.lr=$lr --set saving.name=stage4 > $R/pre.log 2>&1 &
wait
date
bf16() { python3 benchmarks/to_bf16.py $1 $2; }
for v in vaeA vaeB; do
  [ -f $W/$v/vae.safetensors ] || continue
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); m.pop('history'); print(sys.argv[2], json.dumps(m))" \
    $W/$v/vae_metrics.json $v | tee -a $R/summary.txt
  bf16 $W/$v/vae.safetensors $R/$v.safetensors
done
[ -f $W/pre/runs/stage4/metrics.jsonl ] && cp $W/pre/runs/stage4/metrics.jsonl $R/metrics_stage4.jsonl
bf16 $W/pre/base/transformer.safetensors $R/transformer_stage4.safetensors
E="timeout 20 python3 -m wantune.toy.evaluate --concept base --clips 32 --seed 1000 --device cuda"
for v in vaeA vaeB; do  # new decoder with the shipped transformer, and with the continued one
  [ -f $W/$v/vae.safetensors ] || continue
  mkdir -p $W/e_$v && cp -r $S/tokenizer $S/text_encoder.safetensors $S/transformer.safetensors $W/e_$v/
  cp $W/$v/vae.safetensors $W/e_$v/
  echo "shipped transformer + $v: $($E --base $W/e_$v 2>/dev/null | tail -n 1)" | tee -a $R/summary.txt
  cp $W/pre/base/transformer.safetensors $W/e_$v/
  echo "stage4 transformer + $v: $($E --base $W/e_$v 2>/dev/null | tail -n 1)" | tee -a $R/summary.txt
done
echo "stage4 transformer + shipped vae: $($E --base $W/pre/base 2>/dev/null | tail -n 1)" | tee -a $R/summary.txt
date
