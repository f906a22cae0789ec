#!/usr/bin/env bash
# One device call: the shipped toy VAE's decoder trained further (--decoder-only: latents stay valid), two
# object weights side by side; bf16 weights and metrics in $OUT.   bash benchmarks/toy_decoder_gpu.sh MINUTES LR
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/dec; R=${OUT:-$W}; S=$PWD/src/wantune/toy/assets/base; mkdir -p $W
V="python3 -m wantune.toy.train_vae --steps 100000 --pool 1500 --batch-size 16 --eval-clips 50 --device cuda
   --short-fraction 0 --decoder-only --init $S/vae.safetensors --max-minutes $1 --lr $2"
for ow in 12 20; do timeout $(python3 -c "print(int($1 * 60 + 100))") $V --out $W/ow$ow --object-weight $ow > $W/ow$ow.log 2>&1 & done
wait
for ow in 12 20; do
  [ -f $W/ow$ow/vae.safetensors ] || { tail -n 3 $W/ow$ow.log; continue; }
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); m.pop('history'); print(sys.argv[2], json.dumps(m))" \
    $W/ow$ow/vae_metrics.json ow$ow
  python3 benchmarks/to_bf16.py $W/ow$ow/vae.safetensors $R/vae_ow$ow.safetensors
done
