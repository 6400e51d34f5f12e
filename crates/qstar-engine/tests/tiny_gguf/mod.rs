//! A small GGUF writer for tests: a complete, loadable llama model of a few
//! kilobytes (random weights, a byte-level vocabulary), whose every header
//! field a test can change to build a corrupt file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A metadata value and the GGUF type it is written as.
#[derive(Clone, Debug)]
pub enum Val {
    U8(u8),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    /// A value type id and the bytes that follow it, verbatim.
    Raw(u32, Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    /// ggml order: innermost (columns) first.
    pub ne: Vec<u64>,
    /// 0 = F32.
    pub ty: u32,
    pub data: Vec<u8>,
    /// Data offset to write instead of the real one.
    pub offset: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub kv: Vec<(String, Val)>,
    pub tensors: Vec<Tensor>,
    /// Alignment used for the layout (whatever `general.alignment` says).
    pub align: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_val(out: &mut Vec<u8>, v: &Val) {
    let (ty, body): (u32, Vec<u8>) = match v {
        Val::U8(x) => (0, vec![*x]),
        Val::U32(x) => (4, x.to_le_bytes().to_vec()),
        Val::I32(x) => (5, x.to_le_bytes().to_vec()),
        Val::F32(x) => (6, x.to_le_bytes().to_vec()),
        Val::Bool(x) => (7, vec![*x as u8]),
        Val::U64(x) => (10, x.to_le_bytes().to_vec()),
        Val::Str(s) => {
            let mut b = Vec::new();
            put_str(&mut b, s);
            (8, b)
        }
        Val::Strs(items) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(&mut b, s);
            }
            (9, b)
        }
        Val::I32s(items) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            for x in items {
                b.extend(x.to_le_bytes());
            }
            (9, b)
        }
        Val::Raw(ty, bytes) => (*ty, bytes.clone()),
    };
    out.extend(ty.to_le_bytes());
    out.extend(body);
}

/// GPT-2's printable stand-ins for the 256 bytes.
fn byte_chars() -> Vec<String> {
    let mut extra = 0u32;
    (0..256u32)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("valid char").to_string()
        })
        .collect()
}

pub const N_EMBD: u64 = 8;
pub const N_FF: u64 = 16;
pub const KV_DIM: u64 = 4;

fn f32_tensor(name: &str, ne: &[u64], seed: u32) -> Tensor {
    let n: u64 = ne.iter().product();
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut data = Vec::with_capacity(n as usize * 4);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let x = (state % 2001) as f32 / 1000.0 - 1.0;
        data.extend((x * 0.5).to_le_bytes());
    }
    Tensor {
        name: name.into(),
        ne: ne.to_vec(),
        ty: 0,
        data,
        offset: None,
    }
}

impl Gguf {
    /// A valid one-layer llama: width 8, two heads over one KV head, 258
    /// tokens (the 256 bytes, "ab" and an end-of-text marker).
    pub fn tiny_llama() -> Gguf {
        let mut tokens = byte_chars();
        tokens.push("ab".into());
        tokens.push("<|endoftext|>".into());
        let n_vocab = tokens.len() as u64;
        let mut types = vec![1i32; tokens.len()];
        types[tokens.len() - 1] = 3;
        let kv = vec![
            ("general.architecture".into(), Val::Str("llama".into())),
            ("general.name".into(), Val::Str("tiny".into())),
            ("llama.context_length".into(), Val::U32(64)),
            ("llama.embedding_length".into(), Val::U32(N_EMBD as u32)),
            ("llama.block_count".into(), Val::U32(1)),
            ("llama.feed_forward_length".into(), Val::U32(N_FF as u32)),
            ("llama.attention.head_count".into(), Val::U32(2)),
            ("llama.attention.head_count_kv".into(), Val::U32(1)),
            ("llama.rope.freq_base".into(), Val::F32(10_000.0)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Val::F32(1e-5),
            ),
            ("general.alignment".into(), Val::U32(32)),
            ("tokenizer.ggml.model".into(), Val::Str("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Val::Str("smollm".into())),
            ("tokenizer.ggml.tokens".into(), Val::Strs(tokens)),
            ("tokenizer.ggml.token_type".into(), Val::I32s(types)),
            (
                "tokenizer.ggml.merges".into(),
                Val::Strs(vec!["a b".into()]),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Val::U32(257)),
            ("tokenizer.ggml.eos_token_id".into(), Val::U32(257)),
            (
                "tokenizer.chat_template".into(),
                Val::Str(
                    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}".into(),
                ),
            ),
        ];
        let (d, ff, kvd) = (N_EMBD, N_FF, KV_DIM);
        let tensors = vec![
            f32_tensor("token_embd.weight", &[d, n_vocab], 1),
            f32_tensor("output_norm.weight", &[d], 2),
            f32_tensor("blk.0.attn_norm.weight", &[d], 3),
            f32_tensor("blk.0.attn_q.weight", &[d, d], 4),
            f32_tensor("blk.0.attn_k.weight", &[d, kvd], 5),
            f32_tensor("blk.0.attn_v.weight", &[d, kvd], 6),
            f32_tensor("blk.0.attn_output.weight", &[d, d], 7),
            f32_tensor("blk.0.ffn_norm.weight", &[d], 8),
            f32_tensor("blk.0.ffn_gate.weight", &[d, ff], 9),
            f32_tensor("blk.0.ffn_up.weight", &[d, ff], 10),
            f32_tensor("blk.0.ffn_down.weight", &[ff, d], 11),
        ];
        Gguf {
            version: 3,
            kv,
            tensors,
            align: 32,
        }
    }

    pub fn set(&mut self, key: &str, v: Val) -> &mut Self {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.kv.push((key.into(), v)),
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .expect("tensor of the tiny model")
    }

    /// Replaces a tensor by one of another shape (fresh data of that size).
    pub fn reshape(&mut self, name: &str, ne: &[u64]) -> &mut Self {
        *self.tensor(name) = f32_tensor(name, ne, 99);
        self
    }

    /// Length of the header before the data's alignment padding.
    pub fn header_len(&self) -> u64 {
        self.header().len() as u64
    }

    fn header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            put_val(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.unwrap_or(offset).to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(self.align) * self.align;
        }
        out
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        let pad = |out: &mut Vec<u8>, align: u64| {
            while !(out.len() as u64).is_multiple_of(align) {
                out.push(0);
            }
        };
        pad(&mut out, self.align);
        for t in &self.tensors {
            out.extend(&t.data);
            pad(&mut out, self.align);
        }
        out
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).expect("write the test model");
        path
    }
}
