#!/usr/bin/env bash
# The GPU runs that make the toy base model (docs/toy.md), in stages that each fit one 10-minute device call.
# Needs av, diffusers (+ importlib_metadata) wheels in .whl/ where the GPU image lacks them. Work: out/toy/.
set -o pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src || exit 1
else
  export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1
W=out/toy
R=${OUT:-$W/results}
mkdir -p $W $R
case "$1" in
  vae)  # VAE variants side by side on one GPU: NAME:ARGS...
    shift
    for job in "$@"; do
      name=${job%%:*}; args=${job#*:}
      python3 -m wantune.toy.train_vae --out $W/vae_$name --device cuda $args > $W/vae_$name.log 2>&1 &
    done
    wait
    for job in "$@"; do name=${job%%:*}; echo "== $name"; tail -n 1 $W/vae_$name.log; done
    ;;
  pretrain)  # VAE_DIR CLIPS [--set ...]
    vae=$2; clips=$3; shift 3
    python3 -m wantune.toy.pretrain --out $W/pre --clips $clips --vae $W/$vae/vae.safetensors --device cuda "$@" \
      2>&1 | grep -v "^ *[0-9]*%" | tail -n 30
    ;;
  evaluate)  # CLIPS GUIDANCE...
    clips=$2; shift 2
    for g in "$@"; do
      python3 -m wantune.toy.evaluate --base $W/pre/base --concept base --clips $clips --guidance $g --device cuda \
        | tee $R/evaluate_g$g.json
    done
    ;;
esac
