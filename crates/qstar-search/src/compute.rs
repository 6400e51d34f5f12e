//! Compute accounting: every model call a search makes is counted, so that
//! strategies are compared at equal cost rather than equal sample counts.

use std::sync::Mutex;

use qstar_core::Usage;
use serde::{Deserialize, Serialize};

/// What a search spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    pub tokens_generated: usize,
    /// Prompt tokens sent, computed or not.
    pub prompt_tokens: usize,
    /// Prompt tokens the backend had to run through the model.
    pub prompt_tokens_computed: usize,
    /// Prompt tokens taken from a prefix cache.
    pub prompt_tokens_reused: usize,
    /// Calls made to generate (policy work).
    pub model_calls: usize,
    /// Calls made to score or judge (verifier work).
    pub verifier_calls: usize,
    /// 2 × parameters × (tokens generated + prompt tokens computed), or 0
    /// when the parameter count is unknown.
    pub flops: f64,
}

impl Compute {
    pub fn add(&mut self, other: &Compute) {
        self.tokens_generated += other.tokens_generated;
        self.prompt_tokens += other.prompt_tokens;
        self.prompt_tokens_computed += other.prompt_tokens_computed;
        self.prompt_tokens_reused += other.prompt_tokens_reused;
        self.model_calls += other.model_calls;
        self.verifier_calls += other.verifier_calls;
        self.flops += other.flops;
    }
}

/// Who asked for a model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Policy,
    Verifier,
}

/// A running total shared by the tasks of one search.
#[derive(Debug, Default)]
pub struct Meter {
    total: Mutex<Compute>,
    /// Model parameters, for the FLOP estimate (0: unknown).
    parameters: u64,
}

impl Meter {
    pub fn new(parameters: u64) -> Self {
        Meter {
            total: Mutex::new(Compute::default()),
            parameters,
        }
    }

    pub fn record(&self, caller: Caller, calls: usize, usage: &Usage) {
        let computed = usage
            .prompt_tokens
            .saturating_sub(usage.prompt_tokens_reused);
        let mut t = self.total.lock().unwrap_or_else(|e| e.into_inner());
        t.tokens_generated += usage.completion_tokens;
        t.prompt_tokens += usage.prompt_tokens;
        t.prompt_tokens_computed += computed;
        t.prompt_tokens_reused += usage.prompt_tokens_reused;
        match caller {
            Caller::Policy => t.model_calls += calls,
            Caller::Verifier => t.verifier_calls += calls,
        }
        t.flops += 2.0 * self.parameters as f64 * (usage.completion_tokens + computed) as f64;
    }

    pub fn total(&self) -> Compute {
        *self.total.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_split_into_computed_and_reused() {
        let m = Meter::new(100);
        let usage = Usage {
            prompt_tokens: 50,
            prompt_tokens_reused: 32,
            completion_tokens: 10,
        };
        m.record(Caller::Policy, 2, &usage);
        m.record(Caller::Verifier, 1, &usage);
        let t = m.total();
        assert_eq!(t.prompt_tokens_computed, 36);
        assert_eq!(t.prompt_tokens_reused, 64);
        assert_eq!((t.model_calls, t.verifier_calls), (2, 1));
        assert_eq!(t.flops, 2.0 * 100.0 * 56.0);
    }
}
