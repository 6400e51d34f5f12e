//! Test-time search: spending inference compute well. Step-wise generation
//! that grows a search tree, verifiers that score steps and solutions,
//! strategies from majority voting to MCTS and REBASE, compute-optimal
//! strategy choice, and metering of every model call.
//!
//! Pipelines take `&dyn LanguageModel`, so the same search runs on the
//! embedded engine or against a server.

pub mod compute;
pub mod optimal;
pub mod prompts;
pub mod searcher;
pub mod solve;
pub mod strategy;
pub mod tree;
pub mod verifier;

pub use compute::{Compute, Meter};
pub use optimal::{Policy, PolicyChoice};
pub use prompts::Prompts;
pub use searcher::{SearchConfig, Searcher};
pub use solve::{verifier_names, SolveRecord, Solver, VerifierKind};
pub use strategy::{run, Outcome, Scorer, Strategy};
pub use tree::{Node, NodeId, Tree};
pub use verifier::{
    implicit_token_rewards, Aggregation, AgreementVerifier, CheckerVerifier, ConfidenceVerifier,
    DpoVerifier, JudgeVerifier, LecoVerifier, LikelihoodVerifier, PrmModelVerifier,
    RewardModelVerifier, SolutionRewarder, StepRewarder, Verifier,
};

use qstar_core::ModelError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SearchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Config(String),
}

impl SearchError {
    /// Errors the user can fix by changing the command or its input.
    pub fn is_input_error(&self) -> bool {
        match self {
            SearchError::Model(e) => e.is_input_error(),
            SearchError::Config(_) => true,
        }
    }
}
