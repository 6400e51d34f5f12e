//! Reuse of computed keys and values across prompts that share a prefix.
//!
//! Token sequences are cut into fixed blocks. A block is identified by a hash
//! of its tokens chained with the hash of everything before it, so a lookup
//! walks a new prompt block by block and stops at the first block nobody has
//! computed. Memory is bounded; the least recently used blocks go first.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::llama::KvCache;

pub const BLOCK_TOKENS: usize = 16;

struct Block {
    tokens: Vec<u32>,
    /// Per layer, `BLOCK_TOKENS × kv_dim` keys and values.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    last_used: u64,
}

pub struct PrefixCache {
    blocks: HashMap<u64, Block>,
    kv_dim: usize,
    bytes: usize,
    budget_bytes: usize,
    clock: u64,
}

/// Chained hashes of the whole blocks of `tokens`.
pub fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut parent = 0u64;
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .map(|block| {
            let mut h = DefaultHasher::new();
            parent.hash(&mut h);
            block.hash(&mut h);
            parent = h.finish();
            parent
        })
        .collect()
}

impl PrefixCache {
    pub fn new(kv_dim: usize, budget_bytes: usize) -> Self {
        PrefixCache {
            blocks: HashMap::new(),
            kv_dim,
            bytes: 0,
            budget_bytes,
            clock: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many leading blocks of `tokens` (with these hashes) are cached.
    pub fn cached_blocks(&self, tokens: &[u32], hashes: &[u64]) -> usize {
        hashes
            .iter()
            .enumerate()
            .take_while(|(i, h)| {
                self.blocks
                    .get(h)
                    .is_some_and(|b| b.tokens == tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS])
            })
            .count()
    }

    /// Copies the first `len` cached positions into an empty KV cache.
    pub fn restore(&mut self, hashes: &[u64], len: usize, kv: &mut KvCache) {
        self.clock += 1;
        let row = self.kv_dim;
        let mut left = len;
        for h in hashes {
            if left == 0 {
                break;
            }
            let Some(block) = self.blocks.get_mut(h) else {
                break;
            };
            block.last_used = self.clock;
            let take = left.min(BLOCK_TOKENS);
            for (layer, (k, v)) in block.k.iter().zip(&block.v).enumerate() {
                kv.k[layer].extend_from_slice(&k[..take * row]);
                kv.v[layer].extend_from_slice(&v[..take * row]);
            }
            kv.len += take;
            left -= take;
        }
    }

    /// Stores the whole blocks of a sequence's computed prefix.
    pub fn insert(&mut self, tokens: &[u32], hashes: &[u64], kv: &KvCache) {
        self.clock += 1;
        let row = self.kv_dim;
        let whole = (kv.len / BLOCK_TOKENS).min(hashes.len());
        for (i, h) in hashes.iter().enumerate().take(whole) {
            if let Some(b) = self.blocks.get_mut(h) {
                b.last_used = self.clock;
                continue;
            }
            let span = i * BLOCK_TOKENS * row..(i + 1) * BLOCK_TOKENS * row;
            let block = Block {
                tokens: tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS].to_vec(),
                k: kv.k.iter().map(|l| l[span.clone()].to_vec()).collect(),
                v: kv.v.iter().map(|l| l[span.clone()].to_vec()).collect(),
                last_used: self.clock,
            };
            self.bytes += self.block_bytes(&block);
            self.blocks.insert(*h, block);
        }
        self.evict();
    }

    fn block_bytes(&self, b: &Block) -> usize {
        b.k.iter().chain(&b.v).map(|l| l.len() * 4).sum::<usize>() + b.tokens.len() * 4
    }

    fn evict(&mut self) {
        while self.bytes > self.budget_bytes {
            let Some((&oldest, _)) = self.blocks.iter().min_by_key(|(_, b)| b.last_used) else {
                break;
            };
            if let Some(b) = self.blocks.remove(&oldest) {
                self.bytes -= self.block_bytes(&b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_for(tokens: &[u32], layers: usize, kv_dim: usize) -> KvCache {
        let mut kv = KvCache::new(layers);
        for (p, &t) in tokens.iter().enumerate() {
            for l in 0..layers {
                kv.k[l].extend((0..kv_dim).map(|j| (t as f32) + (l * 100 + j) as f32 + p as f32));
                kv.v[l].extend((0..kv_dim).map(|j| -(t as f32) - j as f32));
            }
        }
        kv.len = tokens.len();
        kv
    }

    #[test]
    fn shared_prefix_is_found_and_restored_exactly() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[35] = 999; // differs in the third block only
        let mut cache = PrefixCache::new(2, usize::MAX);
        let ha = block_hashes(&a);
        cache.insert(&a, &ha, &kv_for(&a, 3, 2));
        let hb = block_hashes(&b);
        assert_eq!(cache.cached_blocks(&b, &hb), 2);
        let mut kv = KvCache::new(3);
        cache.restore(&hb, 20, &mut kv);
        let want = kv_for(&a[..20], 3, 2);
        assert_eq!(kv.len, 20);
        assert_eq!(kv.k, want.k);
        assert_eq!(kv.v, want.v);
    }

    #[test]
    fn a_block_depends_on_everything_before_it() {
        let a: Vec<u32> = (0..32).collect();
        let mut b = a.clone();
        b[0] = 7;
        assert_ne!(block_hashes(&a)[1], block_hashes(&b)[1]);
    }

    #[test]
    fn memory_is_bounded_and_least_recent_goes_first() {
        let kv_dim = 4;
        let block_bytes = 2 * BLOCK_TOKENS * kv_dim * 4 + BLOCK_TOKENS * 4;
        let mut cache = PrefixCache::new(kv_dim, 2 * block_bytes);
        let seqs: Vec<Vec<u32>> = (0..3).map(|s| vec![s; 16]).collect();
        for s in &seqs {
            cache.insert(s, &block_hashes(s), &kv_for(s, 1, kv_dim));
        }
        assert!(cache.bytes() <= 2 * block_bytes);
        assert_eq!(cache.cached_blocks(&seqs[0], &block_hashes(&seqs[0])), 0);
        assert_eq!(cache.cached_blocks(&seqs[2], &block_hashes(&seqs[2])), 1);
    }
}
