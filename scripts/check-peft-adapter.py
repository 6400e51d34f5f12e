#!/usr/bin/env python3
# Checks that Hugging Face PEFT loads a LoRA adapter directory
# (adapter_config.json + adapter_model.safetensors) onto a LlamaForCausalLM of
# SmolLM2-135M's shape (random weights; only names and shapes matter) with
# `PeftModel.from_pretrained`, and that every tensor of the file landed in the
# model: the file's names equal the names PEFT expects for that config, every
# shape matches, and the loaded values equal the file's. PEFT's warnings about
# missing or unexpected keys count as failures. Prints the adapted modules and
# the verdict; exits 0 when everything matched, 1 when something did not,
# 2 on a bad directory, 3 when torch, transformers, peft or safetensors cannot
# be imported.
#
# Install the packages into a virtualenv outside the repository (the Linux
# wheel of torch pulls about 5 GB of CUDA libraries):
#   python3 -m venv ~/.cache/qstar/torch-venv
#   ~/.cache/qstar/torch-venv/bin/pip install torch transformers peft psutil
# then run: ~/.cache/qstar/torch-venv/bin/python scripts/check-peft-adapter.py DIR
import argparse
import json
import os
import re
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# SmolLM2-135M's shape, as in bench-train-torch.py.
SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)
KEY_WARNING = re.compile(r"(missing|unexpected)[^.]*keys?|keys?[^.]*(missing|unexpected)", re.I)


def say(msg):
    print(msg, flush=True)


def fail_usage(msg):
    print(f"check-peft-adapter: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    p = argparse.ArgumentParser(description="Load a LoRA adapter with PEFT and check every tensor.")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    p.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"],
                   help="layers of the base model (default: SmolLM2-135M's 30)")
    args = p.parse_args(argv)
    if args.layers < 1:
        fail_usage(f"--layers must be at least 1, not {args.layers}")

    try:
        import torch
        import transformers
        import peft
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict
        from safetensors import safe_open
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as err:
        print(f"check-peft-adapter: cannot import the packages ({err}); see this script's header",
              file=sys.stderr)
        return 3

    cfg_path = os.path.join(args.adapter_dir, "adapter_config.json")
    st_path = os.path.join(args.adapter_dir, "adapter_model.safetensors")
    for path in (cfg_path, st_path):
        if not os.path.isfile(path):
            fail_usage(f"{path}: no such file")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            adapter_cfg = json.load(f)
    except (OSError, ValueError) as err:
        fail_usage(f"{cfg_path}: {err}")
    if not isinstance(adapter_cfg, dict):
        fail_usage(f"{cfg_path}: not a JSON object")

    say(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    say(f"adapter config: peft_type {adapter_cfg.get('peft_type')}, r {adapter_cfg.get('r')}, "
        f"lora_alpha {adapter_cfg.get('lora_alpha')}, target_modules {adapter_cfg.get('target_modules')}")

    # The file's own tensors, read independently of PEFT.
    file_tensors = {}
    try:
        with safe_open(st_path, framework="pt") as f:
            for name in f.keys():
                file_tensors[name] = f.get_tensor(name)
    except Exception as err:  # the reader raises several kinds on a bad file
        fail_usage(f"{st_path}: not a readable safetensors file ({err})")

    torch.manual_seed(0)
    shape = dict(SHAPE, num_hidden_layers=args.layers)
    base = LlamaForCausalLM(LlamaConfig(**shape))

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base, args.adapter_dir)
        except Exception as err:  # size mismatches, bad configs, unknown types
            say(f"FAIL: PEFT could not load the adapter: {type(err).__name__}: {err}")
            return 1
    for w in caught:
        text = str(w.message)
        if KEY_WARNING.search(text):
            problems.append(f"PEFT warned: {text}")
        else:
            print(f"check-peft-adapter: PEFT warning: {text}", file=sys.stderr)

    # What PEFT expects for this config, in the file's naming (no adapter name).
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(file_tensors))
    unexpected = sorted(set(file_tensors) - set(expected))
    for name in missing:
        problems.append(f"missing in the file: {name} {tuple(expected[name].shape)}")
    for name in unexpected:
        problems.append(f"not expected by PEFT: {name} {tuple(file_tensors[name].shape)}")
    matched = 0
    for name in sorted(set(expected) & set(file_tensors)):
        want, got = expected[name], file_tensors[name]
        if tuple(want.shape) != tuple(got.shape):
            problems.append(f"shape of {name}: file {tuple(got.shape)}, PEFT expects {tuple(want.shape)}")
        elif not torch.equal(want.to(got.dtype), got):
            problems.append(f"values of {name} differ from the file after loading")
        else:
            matched += 1

    # The adapted modules, with the rank of each.
    modules = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and "default" in lora_a:
            a = lora_a["default"].weight
            b = module.lora_B["default"].weight
            modules.append((name, tuple(a.shape), tuple(b.shape)))
    say(f"loaded modules: {len(modules)}")
    for name, a, b in modules:
        say(f"  {name}: lora_A {a}, lora_B {b}")
    say(f"tensors: {len(file_tensors)} in the file, {len(expected)} expected, {matched} matched")

    if problems:
        for line in problems:
            say(f"FAIL: {line}")
        return 1
    if not file_tensors:
        say("FAIL: the adapter holds no tensors")
        return 1
    say("OK: every tensor's name and shape matched")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
