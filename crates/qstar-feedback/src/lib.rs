//! AI feedback: turning a language model into a labeler.
//!
//! For now: constitutions, and Constitutional-AI pairwise labeling with
//! sampled principles or the whole ensemble and position debiasing.

pub mod cai;
pub mod constitution;
pub mod judge;
pub mod metrics;
pub mod rate;
pub mod revise;

pub use cai::{CaiConfig, CaiLabeler, Method, PairLabel, PrincipleChoice, PromptFormat};
pub use constitution::{Constitution, CritiqueRevision};
pub use judge::{judge_prompts, JudgeConfig, JudgedPrompt};
pub use rate::{Rater, Rating};
pub use revise::{critique_and_revise, ReviseConfig, Revision};

/// SplitMix64 finalizer: turns a seed and a record's key into an independent
/// stream, so every draw depends only on them, never on batching or order.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
