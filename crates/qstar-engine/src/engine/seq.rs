//! Sequences: the unit the scheduler batches, and what one forward pass
//! does to one sequence.

use qstar_core::{Completion, FinishReason, SamplingParams, TokenLogprob, TopLogprob};

use crate::llama::KvCache;
use crate::model::LoadedModel;
use crate::sampling::{log_softmax, sample, top_k_indices, Rng};
use crate::tokenizer::Tokenizer;

/// What a finished sequence reports to its job.
pub(super) enum SeqOutput {
    Completion(Completion),
    /// Log-probs of the wanted ids, per wanted row, in order, and the
    /// alternatives at those rows when they were asked for.
    Logprobs(Vec<Vec<f32>>, Vec<(u32, Vec<TopLogprob>)>),
}

pub(super) struct Generation {
    pub(super) params: SamplingParams,
    pub(super) rng: Rng,
    pub(super) top_logprobs: Option<usize>,
    pub(super) generated: Vec<u32>,
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) finish: Option<FinishReason>,
    /// Length of the text cut before a stop string, when one appeared.
    pub(super) stop_at: Option<usize>,
    /// Where each sampled token goes as well, with the sample's index.
    pub(super) progress: Option<super::TokenSink>,
}

pub(super) struct Seq {
    pub(super) job: u64,
    /// Which part of the job this is (sample index, option index).
    pub(super) tag: usize,
    pub(super) tokens: Vec<u32>,
    /// Tokens that were given (the rest were generated).
    pub(super) prompt_len: usize,
    pub(super) hashes: Vec<u64>,
    pub(super) kv: KvCache,
    /// Rows whose next-token log-probs are wanted, with the ids wanted.
    pub(super) wants: Vec<(usize, Vec<u32>)>,
    pub(super) results: Vec<Vec<f32>>,
    /// Alternatives to report at each wanted row (0: none), and them with
    /// the rank of the row's own next token.
    pub(super) top_k: usize,
    pub(super) top: Vec<(u32, Vec<TopLogprob>)>,
    pub(super) generation: Option<Generation>,
    /// The sequence wants its last token's final hidden state, not logits.
    pub(super) hidden_state: bool,
    pub(super) reused: usize,
    /// Block hashes this sequence is computing that others may wait for.
    pub(super) claimed: Vec<u64>,
    /// A deliberate failure the tests ask for.
    #[cfg(test)]
    pub(super) fault: Option<Fault>,
}

/// Where a test makes a sequence panic, chosen by a marker in its prompt.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fault {
    Intake,
    Forward,
    Absorb,
}

#[cfg(test)]
impl Fault {
    pub(super) const MARKERS: [(&'static str, Fault); 3] = [
        ("\u{1}panic in intake\u{1}", Fault::Intake),
        ("\u{1}panic in the forward pass\u{1}", Fault::Forward),
        ("\u{1}panic in absorb\u{1}", Fault::Absorb),
    ];

    pub(super) fn in_prompt(prompt: &str) -> Option<Fault> {
        Self::MARKERS
            .iter()
            .find(|(m, _)| prompt.contains(m))
            .map(|&(_, f)| f)
    }
}

impl Seq {
    /// First row whose logits this sequence needs.
    pub(super) fn first_logit_row(&self) -> usize {
        match &self.generation {
            Some(_) => self.tokens.len() - 1,
            None => self.wants.first().map_or(self.tokens.len() - 1, |w| w.0),
        }
    }

    pub(super) fn done(&self) -> bool {
        match &self.generation {
            Some(g) => g.finish.is_some(),
            None => self.kv.len >= self.tokens.len(),
        }
    }
}

/// What a forward pass did for one sequence.
pub(super) struct Absorbed {
    pub(super) prompt_computed: usize,
    pub(super) generated: usize,
    pub(super) prompt_completed: bool,
}

/// Uses the logits a sequence got from a forward pass: wanted log-probs for
/// scoring, or the next token for generation.
pub(super) fn absorb(model: &LoadedModel, seq: &mut Seq, start: usize, rows: Vec<f32>) -> Absorbed {
    #[cfg(test)]
    if seq.fault == Some(Fault::Absorb) {
        panic!("injected fault while taking in logits");
    }
    let n_vocab = model.llama.config.n_vocab;
    if seq.hidden_state {
        return absorb_hidden(model, seq, start, rows);
    }
    let tokenizer = &model.tokenizer;
    let context = model.llama.config.context_length;
    let end = seq.kv.len;
    let n_rows = rows.len() / n_vocab;
    let first_row = end - n_rows;
    let was_prefill = start < seq.prompt_len;
    let mut outcome = Absorbed {
        prompt_computed: if was_prefill {
            end.min(seq.prompt_len) - start
        } else {
            0
        },
        generated: 0,
        prompt_completed: was_prefill && end >= seq.prompt_len,
    };
    if seq.generation.is_none() {
        for (r, row) in rows.chunks_exact(n_vocab).enumerate() {
            let abs = first_row + r;
            if !seq.wants.iter().any(|w| w.0 == abs) {
                continue;
            }
            let lsm = log_softmax(row);
            for (_, ids) in seq.wants.iter().filter(|w| w.0 == abs) {
                seq.results
                    .push(ids.iter().map(|&id| lsm[id as usize]).collect());
                if let (true, Some(&id)) = (seq.top_k > 0, ids.first()) {
                    let own = lsm[id as usize];
                    let rank = 1 + lsm.iter().filter(|&&v| v > own).count() as u32;
                    seq.top
                        .push((rank, top_alternatives(tokenizer, &lsm, seq.top_k)));
                }
            }
        }
        return outcome;
    }
    if end != seq.tokens.len() || n_rows == 0 {
        return outcome;
    }
    let row = &rows[(n_rows - 1) * n_vocab..];
    let Some(g) = seq.generation.as_mut() else {
        return outcome;
    };
    let token = sample(row, &g.params, &mut g.rng);
    if tokenizer.is_end_of_generation(token) && !g.params.ignore_eos {
        g.finish = Some(FinishReason::Eos);
        return outcome;
    }
    if let Some(k) = g.top_logprobs {
        let lsm = log_softmax(row);
        let top = top_alternatives(tokenizer, &lsm, k);
        g.logprobs.push(TokenLogprob {
            id: token,
            rank: None,
            text: tokenizer.token_text(token),
            logprob: Some(lsm[token as usize]),
            top,
        });
    }
    g.generated.push(token);
    if let Some(sink) = &g.progress {
        // A receiver that went away only stops listening.
        let _ = sink.send((seq.tag, token));
    }
    seq.tokens.push(token);
    outcome.generated = 1;
    if !g.params.stop.is_empty() {
        let text = tokenizer.decode(&g.generated);
        if let Some(at) = g
            .params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            g.stop_at = Some(at);
            g.finish = Some(FinishReason::Stop);
        }
    }
    if g.finish.is_none()
        && (g.generated.len() >= g.params.max_tokens || seq.tokens.len() >= context)
    {
        g.finish = Some(FinishReason::Length);
    }
    outcome
}

/// The `k` most likely tokens of a log-softmax row, most likely first.
fn top_alternatives(tokenizer: &Tokenizer, lsm: &[f32], k: usize) -> Vec<TopLogprob> {
    top_k_indices(lsm, k)
        .into_iter()
        .map(|id| TopLogprob {
            id: id as u32,
            text: tokenizer.token_text(id as u32),
            logprob: lsm[id],
        })
        .collect()
}

/// Takes in the hidden states of a sequence that wants its last one: the
/// last row of the pass that reaches the sequence's end.
fn absorb_hidden(model: &LoadedModel, seq: &mut Seq, start: usize, rows: Vec<f32>) -> Absorbed {
    let d = model.llama.config.n_embd;
    let end = seq.kv.len;
    if end == seq.tokens.len() && rows.len() >= d {
        seq.results.push(rows[rows.len() - d..].to_vec());
    }
    Absorbed {
        prompt_computed: end.min(seq.prompt_len) - start.min(seq.prompt_len),
        generated: 0,
        prompt_completed: start < seq.prompt_len && end >= seq.prompt_len,
    }
}
