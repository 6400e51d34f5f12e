//! AI feedback: turning a language model into a labeler.
//!
//! For now: constitutions, and Constitutional-AI pairwise labeling with
//! sampled principles or the whole ensemble and position debiasing.

pub mod cai;
pub mod constitution;
pub mod judge;
pub mod prompts;
pub mod rate;
pub mod records;
pub mod revise;

pub use cai::{CaiConfig, CaiLabeler, Method, PairLabel, PrincipleChoice};
pub use constitution::{Constitution, CritiqueRevision};
pub use judge::{judge_prompts, judge_prompts_with, JudgeConfig, JudgedPrompt};
pub use prompts::Prompts;
pub use qstar_core::PromptFormat;
pub use rate::{Rater, Rating};
pub use records::{
    judged_record, opening_prompts, rated_pair_record, revision_rows, sft_row, LabelRecord, SftKeys,
};
pub use revise::{critique_and_revise, ReviseConfig, Revision};

pub(crate) use qstar_core::mix;
