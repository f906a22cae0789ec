"""Bad input to every command is one `error: ...` line on stderr and exit code 2, never a traceback.

Each case runs `python -m wantune ...` in a subprocess (as a user would) against files made in a temporary
folder: a missing path, a text file, random bytes, an empty file, a checkpoint of the wrong kind, bad flag values.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FIXTURES

T2V = str(FIXTURES / "wan21_t2v_tiny.safetensors")
VAE = str(FIXTURES / "wan21_vae_tiny.safetensors")
UMT5 = str(FIXTURES / "umt5_tiny_official.pth")
TOKENIZER = str(FIXTURES / "tokenizer_tiny")
GENERATE = ["generate", "--model", T2V, "--variant", "wan2.1-t2v-1.3b", "--vae", VAE, "--text-encoder", UMT5,
            "--tokenizer", TOKENIZER, "--prompt", "x", "--out", "o.mp4", "--no-progress"]

CASES = {
    "model inspect: missing": ["model", "inspect", "missing.safetensors"],
    "model inspect: text as safetensors": ["model", "inspect", "text.safetensors"],
    "model inspect: random bytes": ["model", "inspect", "random.safetensors"],
    "model inspect: empty file": ["model", "inspect", "empty.safetensors"],
    "model inspect: random .pth": ["model", "inspect", "random.pth"],
    "model inspect: empty folder": ["model", "inspect", "emptydir"],
    "lora inspect: a transformer": ["lora", "inspect", T2V],
    "lora inspect: random bytes": ["lora", "inspect", "random.safetensors"],
    "lora convert: missing": ["lora", "convert", "missing.safetensors", "--to", "kohya", "-o", "out.safetensors"],
    "lora convert: output is the input": ["lora", "convert", "random.safetensors", "--to", "kohya", "-o",
                                          "random.safetensors"],
    "lora merge: strength not a number": ["lora", "merge", "--model", T2V, "--lora", "random.safetensors:strong",
                                          "-o", "m.safetensors"],
    "lora merge: VAE as model": ["lora", "merge", "--model", VAE, "--lora", "random.safetensors", "-o", "m.safetensors"],
    "generate: VAE as transformer": [*GENERATE, "--model", VAE],
    "generate: transformer as VAE": [*GENERATE, "--vae", T2V],
    "generate: random text encoder": [*GENERATE, "--text-encoder", "random.pth"],
    "generate: bad --steps": [*GENERATE, "--steps", "0"],
    "generate: negative --guidance": [*GENERATE, "--guidance", "-1"],
    "generate: bad --device": [*GENERATE, "--device", "tpu9"],
    "dataset check: missing": ["dataset", "check", "missing.toml"],
    "dataset check: text file": ["dataset", "check", "notes.txt"],
    "dataset check: bad TOML": ["dataset", "check", "bad.toml"],
    "dataset check: bad --batch-size": ["dataset", "check", "emptydir", "--batch-size", "0"],
    "dataset prep: missing": ["dataset", "prep", "missing", "out"],
    "dataset prep: bad --resolution": ["dataset", "prep", "emptydir", "out", "--resolution", "abc"],
    "caption: no backend": ["caption", "emptydir"],
    "caption: bad --endpoint": ["caption", "emptydir", "--endpoint", "notaurl", "--model", "m"],
    "cache: missing config": ["cache", "missing.toml"],
    "cache: text as config": ["cache", "notes.txt"],
    "cache: bad --device": ["cache", "dataset.toml", "--vae", VAE, "--device", "tpu9"],
    "train: missing config": ["train", "missing.toml"],
    "train: unknown key": ["train", "bad_key.toml"],
    "argparse: not an int": [*GENERATE, "--steps", "abc"],
    "argparse: bad choice": ["cache", "dataset.toml", "--dtype", "fp64"],
    "argparse: missing required": ["lora", "convert", "missing.safetensors"],
    "argparse: unknown command": ["nope"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "text.safetensors").write_text("hello\n")
    (folder / "notes.txt").write_text("hello\n")
    (folder / "empty.safetensors").write_bytes(b"")
    random_bytes = bytes(range(256)) * 16
    (folder / "random.safetensors").write_bytes(b"\xff" * 8 + random_bytes)
    (folder / "random.pth").write_bytes(random_bytes)
    (folder / "emptydir").mkdir()
    (folder / "bad.toml").write_text("x = [\n")
    (folder / "bad_key.toml").write_text("nope = 1\n")
    (folder / "dataset.toml").write_text('[[datasets]]\npath = "emptydir"\n')
    return folder


@pytest.mark.parametrize("argv", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(workdir, argv):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "wantune", *argv], cwd=workdir, capture_output=True, text=True,
                            timeout=120, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
