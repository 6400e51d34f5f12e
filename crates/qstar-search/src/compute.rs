//! Compute accounting: every model call a search makes is counted, so that
//! strategies are compared at equal cost rather than equal sample counts.

use std::sync::Mutex;

use qstar_core::Usage;
use serde::{Deserialize, Serialize};

/// What a search spent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    /// 2 × parameters × (tokens generated + prompt tokens computed), each
    /// model's work on its own parameter count (a trained verifier's
    /// backbone may differ from the policy); `None` (null in JSON) when a
    /// parameter count is unknown, never a made-up 0.
    pub flops: Option<f64>,
}

impl Default for Compute {
    /// Nothing spent: 0 FLOPs, which are known.
    fn default() -> Self {
        Compute {
            tokens_generated: 0,
            prompt_tokens: 0,
            prompt_tokens_computed: 0,
            prompt_tokens_reused: 0,
            model_calls: 0,
            verifier_calls: 0,
            flops: Some(0.0),
        }
    }
}

impl Compute {
    pub fn add(&mut self, other: &Compute) {
        self.tokens_generated += other.tokens_generated;
        self.prompt_tokens += other.prompt_tokens;
        self.prompt_tokens_computed += other.prompt_tokens_computed;
        self.prompt_tokens_reused += other.prompt_tokens_reused;
        self.model_calls += other.model_calls;
        self.verifier_calls += other.verifier_calls;
        // A total with an unknown part is unknown.
        self.flops = self.flops.zip(other.flops).map(|(a, b)| a + b);
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
    /// Model parameters, for the FLOP estimate (`None`: unknown).
    parameters: Option<u64>,
}

impl Meter {
    /// A meter for a model of this many parameters.
    pub fn new(parameters: u64) -> Self {
        Meter::with_parameters(Some(parameters))
    }

    /// A meter whose FLOP count is unknown when `parameters` is.
    pub fn with_parameters(parameters: Option<u64>) -> Self {
        let flops = parameters.map(|_| 0.0);
        Meter {
            total: Mutex::new(Compute {
                flops,
                ..Compute::default()
            }),
            parameters,
        }
    }

    /// The policy's parameter count the meter reckons FLOPs on.
    pub fn parameters(&self) -> Option<u64> {
        self.parameters
    }

    pub fn record(&self, caller: Caller, calls: usize, usage: &Usage) {
        self.record_model(caller, calls, usage, self.parameters);
    }

    /// Records work done by another model than the meter's (a trained
    /// verifier's backbone), whose FLOPs are reckoned on its own parameter
    /// count; unknown when that is.
    pub fn record_model(
        &self,
        caller: Caller,
        calls: usize,
        usage: &Usage,
        parameters: Option<u64>,
    ) {
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
        let tokens = (usage.completion_tokens + computed) as f64;
        t.flops = t
            .flops
            .zip(parameters)
            .map(|(f, p)| f + 2.0 * p as f64 * tokens);
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
        assert_eq!(t.flops, Some(2.0 * 100.0 * 56.0));
    }

    #[test]
    fn unknown_parameters_give_unknown_flops_not_zero() {
        let m = Meter::with_parameters(None);
        let usage = Usage {
            prompt_tokens: 5,
            prompt_tokens_reused: 0,
            completion_tokens: 3,
        };
        m.record(Caller::Policy, 1, &usage);
        let t = m.total();
        assert_eq!((t.tokens_generated, t.prompt_tokens_computed), (3, 5));
        assert_eq!(t.flops, None);
        let json = serde_json::to_value(t).expect("json");
        assert!(json["flops"].is_null(), "{json}");
        // Summing a known and an unknown part is unknown; known parts add.
        let known = Meter::new(10);
        known.record(Caller::Policy, 1, &usage);
        let mut sum = Compute::default();
        sum.add(&known.total());
        assert_eq!(sum.flops, Some(160.0));
        sum.add(&t);
        assert_eq!(sum.flops, None);
        // Records written before keep their numbers.
        let old: Compute = serde_json::from_value(serde_json::json!({
            "tokens_generated": 1, "prompt_tokens": 1, "prompt_tokens_computed": 1,
            "prompt_tokens_reused": 0, "model_calls": 1, "verifier_calls": 0, "flops": 4.0
        }))
        .expect("old record");
        assert_eq!(old.flops, Some(4.0));
    }
}
