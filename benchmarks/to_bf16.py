"""Round a safetensors file's tensors to bfloat16 (how the toy base weights are shipped and brought back from
the GPU):   python3 benchmarks/to_bf16.py SRC [DST]   (DST defaults to SRC)."""

import sys

import torch
from safetensors.torch import load_file, save_file

src = sys.argv[1]
save_file({k: v.to(torch.bfloat16) for k, v in load_file(src).items()}, sys.argv[2] if len(sys.argv) > 2 else src)
