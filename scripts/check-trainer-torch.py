#!/usr/bin/env python3
# Checks qstar's trainer against Hugging Face transformers + PEFT on a real
# GGUF model: the log-probabilities of a text and the gradients of its mean
# cross-entropy with respect to every LoRA A and B tensor.
#
# The qstar side is written by the `dump_for_torch` example of qstar-train:
#   cargo run --release -p qstar-train --example dump_for_torch -- GGUF ADAPTER_DIR DUMP.json
# This script reads the GGUF with the `gguf` package, dequantizes every tensor
# to f32 (F32, Q8_0 and Q4_1; the Q4_1/Q8_0 results of gguf's helper are
# checked against a direct implementation of the block formulas), builds a
# LlamaForCausalLM whose config comes from the GGUF metadata, loads the
# weights (undoing llama.cpp's reordering of query and key rows), puts the
# PEFT adapter on it with `PeftModel.from_pretrained`, runs DUMP.json's token
# ids and compares:
#   - log p(token i+1 | tokens ≤ i) at every position: max |Δ|;
#   - for L = -mean log p, each LoRA tensor's gradient: max |Δ| and the
#     relative error ‖Δ‖ / ‖g_torch‖.
# It also prints how far the adapter moves the log-probabilities (adapter on
# versus off in PyTorch), so a pass is not a pass on a no-op adapter.
#
# Tolerances (defaults; see --help). Both sides start from the same f32
# weights and differ in summation order (and, with --dtype float64, in
# PyTorch's precision). f32 rounding is ~6e-8 per operation; dot products of
# length 576-1536 through 30 residual blocks carry that to ~1e-5 relative in
# the gradients and a few 1e-5 nats in a log-prob (measured on SmolLM2-135M
# Q4_1, 73 tokens, a rank-8 adapter on all seven projections: log-prob max
# |Δ| 2e-5 to 5e-5 across float32/float64, eager/sdpa; gradient ‖Δ‖/‖g‖
# median 5e-6, max 2.5e-5). The defaults, log-prob max |Δ| ≤ 1e-4 nats and
# each gradient tensor's ‖Δ‖/‖g‖ ≤ 5e-4, sit above that noise and still
# catch a bias of ~1e-4 nats per token (a left-to-right f32 sum over the
# 49152-entry vocabulary gave 2e-4 in the log-probs and up to 4e-3 in the
# gradients). A wrong row permutation,
# scale or mask gives errors of order 1.
#
# Exit codes: 0 all within tolerance, 1 some figure above it, 2 bad input,
# 3 a package (torch, transformers, peft, gguf) cannot be imported.
#
# Install: ~/.cache/qstar/torch-venv/bin/pip install torch transformers peft gguf
# Run:     ~/.cache/qstar/torch-venv/bin/python scripts/check-trainer-torch.py GGUF ADAPTER_DIR DUMP.json
import argparse
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

try:
    import numpy as np
    import torch
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import PeftModel
except ImportError as e:
    print(f"error: {e} (install torch, transformers, peft and gguf)", file=sys.stderr)
    sys.exit(3)


def field(reader, key, required=True):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ValueError(f"the GGUF has no `{key}`")
        return None
    return f.contents()


def own_dequantize(t):
    """Q4_1 and Q8_0 by the block formulas, to check gguf's helper against."""
    raw = np.asarray(t.data, dtype=np.uint8).reshape(-1)
    if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
        # 20 bytes a block: d (f16), m (f16), 16 bytes of 4-bit q; byte i
        # holds element i in its low nibble and element i + 16 in its high.
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        return (d * q + m).reshape(-1)
    if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        # 34 bytes a block: d (f16), 32 signed bytes.
        b = raw.reshape(-1, 34)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    return None


def read_gguf(path):
    reader = gguf.GGUFReader(path)
    if field(reader, "general.architecture") != "llama":
        raise ValueError("not a llama GGUF")
    tensors = {}
    checked = 0
    for t in reader.tensors:
        ne = [int(x) for x in t.shape]  # GGUF order: ne[0] is the row length
        shape = tuple(reversed(ne))
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        mine = own_dequantize(t)
        if mine is not None:
            if not np.array_equal(mine.reshape(shape), values):
                raise ValueError(f"gguf's dequantization of `{t.name}` differs from the block formula")
            checked += 1
        tensors[t.name] = values
    c = {
        "n_layer": int(field(reader, "llama.block_count")),
        "n_embd": int(field(reader, "llama.embedding_length")),
        "n_ff": int(field(reader, "llama.feed_forward_length")),
        "n_head": int(field(reader, "llama.attention.head_count")),
        "n_head_kv": int(field(reader, "llama.attention.head_count_kv")),
        "rope_base": float(field(reader, "llama.rope.freq_base")),
        "rms_eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "context": int(field(reader, "llama.context_length")),
        "n_rot": field(reader, "llama.rope.dimension_count", required=False),
        "n_vocab": tensors["token_embd.weight"].shape[0],
        "tied": "output.weight" not in tensors,
    }
    return c, tensors, checked


def hf_rows_from_gguf(w, heads):
    """llama.cpp stores each head's query/key rows as adjacent RoPE pairs
    (GGUF row h·hd + 2j + s); Hugging Face stores the two halves apart
    (row h·hd + s·hd/2 + j). Returns w with its rows in Hugging Face order."""
    n = w.shape[0]
    hd = n // heads
    idx = np.empty(n, dtype=np.int64)
    for r in range(n):
        h, within = divmod(r, hd)
        s, j = divmod(within, hd // 2)
        idx[r] = h * hd + 2 * j + s
    return w[idx]


def build_model(c, tensors, dtype, attn):
    head_dim = c["n_embd"] // c["n_head"]
    if c["n_rot"] is not None and int(c["n_rot"]) != head_dim:
        raise ValueError("partial RoPE (n_rot < head_dim) is not handled by this check")
    config = LlamaConfig(
        vocab_size=c["n_vocab"],
        hidden_size=c["n_embd"],
        intermediate_size=c["n_ff"],
        num_hidden_layers=c["n_layer"],
        num_attention_heads=c["n_head"],
        num_key_value_heads=c["n_head_kv"],
        head_dim=head_dim,
        max_position_embeddings=c["context"],
        rms_norm_eps=c["rms_eps"],
        rope_theta=c["rope_base"],
        tie_word_embeddings=c["tied"],
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attn_implementation=attn,
    )
    # transformers 5 keeps rope_theta inside rope_parameters; make sure the
    # GGUF's base is what the model uses.
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = c["rope_base"]
        rp.setdefault("rope_type", "default")
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    state = {"model.embed_tokens.weight": tensors["token_embd.weight"],
             "model.norm.weight": tensors["output_norm.weight"]}
    if not c["tied"]:
        state["lm_head.weight"] = tensors["output.weight"]
    names = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(c["n_layer"]):
        for hf, gg in names.items():
            w = tensors[f"blk.{i}.{gg}.weight"]
            if gg == "attn_q":
                w = hf_rows_from_gguf(w, c["n_head"])
            elif gg == "attn_k":
                w = hf_rows_from_gguf(w, c["n_head_kv"])
            state[f"model.layers.{i}.{hf}.weight"] = w
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if c["tied"] else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    if c["tied"]:
        model.tie_weights()
        if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise ValueError("the output projection is not tied to the embedding")
    model.to(dtype)
    inv = model.model.rotary_emb.inv_freq.double()
    expect = 1.0 / (c["rope_base"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not torch.allclose(inv, expect, rtol=1e-6):
        raise ValueError("the model's RoPE frequencies are not the GGUF's")
    return model


def use_ggml_rope(rotary, n_rot, base, positions):
    """Replaces the rotary embedding's angles by llama.cpp's: per position,
    theta_0 = pos and theta_(i+1) = theta_i · base^(-2/n_rot), multiplied up
    in f32 (Hugging Face computes pos · inv_freq_i instead, which rounds
    differently)."""
    half = n_rot // 2
    scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    theta = np.empty((positions, half), dtype=np.float32)
    for pos in range(positions):
        t = np.float32(pos)
        for i in range(half):
            theta[pos, i] = t
            t = np.float32(t * scale)
    ang = torch.from_numpy(theta).double()
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1)
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1)

    def forward(x, position_ids):
        # f32 like the trainer's table, then the model's dtype.
        return cos.float()[position_ids].to(x.dtype), sin.float()[position_ids].to(x.dtype)

    rotary.forward = forward


class SequentialF32LogSoftmax(torch.autograd.Function):
    """log p(target) the way the trainer computes it: in f32, exp(z - max)
    summed one vocabulary entry after another, p = e / sum, log p = ln p;
    backward d/dz = g · (onehot − p) with that p. A diagnostic: a plain f32
    sum over 49152 mostly tiny terms drops the ones below half an ulp of the
    running sum, so it comes out low and log p high."""

    @staticmethod
    def forward(ctx, logits, targets):
        z = logits.detach().float().numpy()
        e = np.exp(z - z.max(axis=1, keepdims=True))
        total = np.cumsum(e, axis=1, dtype=np.float32)[:, -1:]  # left to right
        p = e * (np.float32(1.0) / total)
        t = targets.numpy()
        lp = np.log(p[np.arange(len(t)), t])
        ctx.save_for_backward(torch.from_numpy(p), targets)
        return torch.from_numpy(lp.astype(np.float64))

    @staticmethod
    def backward(ctx, g):
        p, targets = ctx.saved_tensors
        d = -p.double()
        d[torch.arange(len(targets)), targets] += 1.0
        return (g[:, None] * d).to(torch.float32), None


def logprobs(model, ids, vocab_sum="exact"):
    out = model(input_ids=ids, use_cache=False)
    z, targets = out.logits[0, :-1], ids[0, 1:]
    if vocab_sum == "sequential-f32":
        return SequentialF32LogSoftmax.apply(z.float(), targets)
    lp = torch.log_softmax(z.double(), dim=-1)
    return lp.gather(1, targets[:, None])[:, 0]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("gguf")
    ap.add_argument("adapter")
    ap.add_argument("dump")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    ap.add_argument("--rope", choices=["hf", "ggml"], default="hf",
                    help="RoPE angles as transformers computes them, or as llama.cpp (and qstar) "
                         "do (a diagnostic)")
    ap.add_argument("--vocab-sum", choices=["exact", "sequential-f32"], default="exact",
                    help="the softmax over the vocabulary in float64 (the reference), or summed "
                         "left to right in f32 as the trainer does (a diagnostic)")
    ap.add_argument("--logprob-tol", type=float, default=1e-4, help="max |Δ| of a log-prob (nats)")
    ap.add_argument("--grad-tol", type=float, default=5e-4, help="max ‖Δ‖/‖g‖ of a gradient tensor")
    ap.add_argument("--all", action="store_true", help="print every tensor, not only the worst 15")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    dtype = getattr(torch, args.dtype)
    try:
        with open(args.dump) as f:
            dump = json.load(f)
        tokens, want_lp, want_grads = dump["tokens"], dump["logprobs"], dump["lora_grads"]
        c, tensors, checked = read_gguf(args.gguf)
        model = build_model(c, tensors, dtype, args.attn)
        del tensors
        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(dtype)
    if args.rope == "ggml":
        head_dim = c["n_embd"] // c["n_head"]
        use_ggml_rope(model.base_model.model.model.rotary_emb, head_dim, c["rope_base"], len(tokens))
    model.eval()  # dropout off; the dump is deterministic
    print(f"{len(tokens)} tokens; {checked} quantized tensors' dequantization checked; "
          f"torch {args.dtype}, attention {args.attn}, RoPE angles {args.rope}, vocabulary softmax {args.vocab_sum}")

    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad(), model.disable_adapter():
        base_lp = logprobs(model, ids)
    lp = logprobs(model, ids, args.vocab_sum)
    loss = -lp.mean()
    model.zero_grad()
    loss.backward()

    ours = torch.tensor(want_lp, dtype=torch.float64)
    if ours.shape != lp.shape:
        print(f"error: the dump has {ours.numel()} log-probs, expected {lp.numel()}", file=sys.stderr)
        return 2
    lp_d = (lp.detach() - ours).abs()
    effect = (lp.detach() - base_lp).abs().max().item()
    print(f"loss: torch {loss.item():.7f}, qstar {dump['loss']:.7f}, |Δ| {abs(loss.item() - dump['loss']):.2e}")
    print(f"log-probs: max |Δ| {lp_d.max().item():.3e} (at position {int(lp_d.argmax())}), "
          f"mean |Δ| {lp_d.mean().item():.3e}; the adapter moves them by up to {effect:.3e}")

    rows = []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = name.replace(".default.weight", ".weight")
        if key not in want_grads:
            print(f"error: the dump has no gradient for `{key}`", file=sys.stderr)
            return 2
        seen.add(key)
        g = p.grad.detach().double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
        w = want_grads[key]
        q = torch.tensor(w["values"], dtype=torch.float64).reshape(w["shape"])
        if q.shape != g.shape:
            print(f"error: `{key}` has shape {list(q.shape)} in the dump, {list(g.shape)} in torch",
                  file=sys.stderr)
            return 2
        d = q - g
        gn = g.norm().item()
        rel = d.norm().item() / gn if gn > 0 else (0.0 if d.norm().item() == 0 else math.inf)
        rows.append((rel, d.abs().max().item(), gn, key))
    if set(want_grads) - seen:
        print(f"error: the dump has gradients PEFT does not: {sorted(set(want_grads) - seen)[:3]}",
              file=sys.stderr)
        return 2
    rows.sort(reverse=True)
    short = lambda k: k.replace("base_model.model.model.layers.", "L").replace(".weight", "")
    print(f"\n{'tensor':<40} {'‖g‖':>10} {'max |Δ|':>10} {'‖Δ‖/‖g‖':>10}")
    for rel, mx, gn, key in rows if args.all else rows[:15]:
        print(f"{short(key):<40} {gn:>10.3e} {mx:>10.3e} {rel:>10.3e}")
    rels = np.array([r[0] for r in rows])
    print(f"\n{len(rows)} gradient tensors: relative error median {np.median(rels):.2e}, "
          f"90th percentile {np.percentile(rels, 90):.2e}, max {rels.max():.2e} ({short(rows[0][3])})")
    for kind in ("lora_A", "lora_B"):
        k = np.array([r[0] for r in rows if kind in r[3]])
        print(f"  {kind}: median {np.median(k):.2e}, max {k.max():.2e}")
    ok = lp_d.max().item() <= args.logprob_tol and rels.max() <= args.grad_tol
    print(f"\n{'PASS' if ok else 'FAIL'}: log-prob max |Δ| {lp_d.max().item():.2e} (tolerance {args.logprob_tol:g}), "
          f"gradient max relative error {rels.max():.2e} (tolerance {args.grad_tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
