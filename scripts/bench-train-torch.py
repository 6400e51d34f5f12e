#!/usr/bin/env python3
# The PyTorch peer of `qstar bench train`: measures training tokens/s
# (forward + backward + AdamW step + zero_grad) of Hugging Face transformers'
# LlamaForCausalLM with SmolLM2-135M's shape, random weights from a seed, f32,
# sdpa attention, on CPU with a fixed number of threads, for full fine-tuning
# or a PEFT LoRA adapter (r 8, alpha 16, all seven projections). Prints one
# JSON object on stdout with --json (a short line without it); logs go to
# stderr. Exits 3 with one line on stderr when torch, transformers or peft
# cannot be imported, 2 on bad arguments.
#
# Install the packages into a virtualenv outside the repository (the Linux
# wheel of torch pulls about 5 GB of CUDA libraries; for benchmarks only):
#   python3 -m venv ~/.cache/qstar/torch-venv
#   ~/.cache/qstar/torch-venv/bin/pip install torch transformers peft psutil
# and point QSTAR_TORCH_PYTHON at ~/.cache/qstar/torch-venv/bin/python.
#
# Example:
#   $QSTAR_TORCH_PYTHON scripts/bench-train-torch.py --seq-len 64 --batch 4 \
#       --mode lora --threads 2 --steps 5 --warmup 2 --json
import argparse
import json
import os
import resource
import statistics
import sys
import time

# The model is built from a config; nothing is fetched from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# SmolLM2-135M's shape.
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
    attention_dropout=0.0,
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(msg):
    print(f"bench-train-torch: {msg}", file=sys.stderr, flush=True)


def positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def non_negative(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Training tokens/s of HF LlamaForCausalLM (SmolLM2-135M shape) on CPU."
    )
    p.add_argument("--seq-len", type=positive, required=True, help="tokens per sequence")
    p.add_argument("--batch", type=positive, required=True, help="sequences per step")
    p.add_argument("--mode", choices=["full", "lora"], required=True)
    p.add_argument("--threads", type=positive, required=True, help="torch intra-op threads")
    p.add_argument("--steps", type=positive, default=5, help="timed steps")
    p.add_argument("--warmup", type=non_negative, default=2, help="untimed steps before")
    p.add_argument("--seed", type=non_negative, default=0, help="seed of weights and tokens")
    p.add_argument("--tiny", action="store_true", help="2 layers instead of 30 (for testing)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.seq_len > SHAPE["max_position_embeddings"]:
        p.error(f"--seq-len {args.seq_len} exceeds the context of {SHAPE['max_position_embeddings']}")
    return args


def import_packages():
    try:
        import torch
        import transformers
        import peft
    except ImportError as err:
        print(
            f"bench-train-torch: PyTorch peer unavailable ({err}); "
            "install torch, transformers and peft (see this script's header)",
            file=sys.stderr,
        )
        sys.exit(3)
    return torch, transformers, peft


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return rss / (1024 * 1024)
    return rss / 1024


def main(argv):
    args = parse_args(argv)
    torch, transformers, peft = import_packages()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    shape = dict(SHAPE)
    if args.tiny:
        shape["num_hidden_layers"] = 2
    config = LlamaConfig(**shape, attn_implementation="sdpa", use_cache=False)
    model = LlamaForCausalLM(config).to(torch.float32)
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        log("the output projection is not tied to the embeddings")
        return 1
    if model.config._attn_implementation != "sdpa":
        log(f"attention is {model.config._attn_implementation}, not sdpa")
        return 1
    n_params = sum(p.numel() for p in model.parameters())

    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": getattr(model.config, "rope_theta", None)}
    log(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"threads {torch.get_num_threads()}; attention {model.config._attn_implementation}; "
        f"rope_theta {rope.get('rope_theta')}; layers {shape['num_hidden_layers']}; "
        f"{n_params} parameters, {n_trainable} trainable ({args.mode})"
    )

    # All batches are drawn before timing, from their own seeded generator.
    gen = torch.Generator().manual_seed(args.seed + 1)
    total = args.warmup + args.steps
    batches = [
        torch.randint(0, shape["vocab_size"], (args.batch, args.seq_len), generator=gen)
        for _ in range(total)
    ]

    times = []
    for i, ids in enumerate(batches):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        loss = out.loss.item()
        del out
        timed = i >= args.warmup
        if timed:
            times.append(dt)
        log(f"step {i + 1}/{total} {'timed' if timed else 'warm-up'}: {dt:.3f} s, loss {loss:.4f}")

    seconds = sum(times)
    result = {
        "mode": args.mode,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "steps": args.steps,
        "tok_s": args.batch * args.seq_len * args.steps / seconds,
        "step_s_median": statistics.median(times),
        "peak_rss_mb": peak_rss_mb(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{args.mode} {args.batch}x{args.seq_len}, {args.threads} threads: "
            f"{result['tok_s']:.1f} tokens/s, median step {result['step_s_median']:.3f} s, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
