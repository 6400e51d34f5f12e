//! End-to-end behaviour of the embedded engine on the real default model:
//! batching never changes results, the prefix cache never changes results
//! (only the work done), and every request kind honours its contract.

mod common;

use qstar_core::{
    ChooseRequest, FinishReason, GenerateRequest, LanguageModel, Message, SamplingParams,
    ScoreRequest,
};
use qstar_engine::EngineOptions;

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        seed,
        max_tokens,
        ..Default::default()
    }
}

#[test]
fn samples_do_not_depend_on_batching() {
    let engine = common::engine();
    let rt = common::runtime();
    let prompt = engine
        .render_chat(&[Message::user("Name a colour.")], true)
        .expect("chat");
    let mut together = GenerateRequest::new(prompt.clone(), sampled(7, 12));
    together.n = 4;
    let batched = rt
        .block_on(engine.generate(vec![together]))
        .expect("batched")
        .remove(0);
    assert_eq!(batched.completions.len(), 4);
    for i in 0..4 {
        let alone = rt
            .block_on(engine.generate(vec![GenerateRequest::new(
                prompt.clone(),
                sampled(7 + i, 12),
            )]))
            .expect("alone")
            .remove(0);
        assert_eq!(
            alone.completions[0].token_ids,
            batched.completions[i as usize].token_ids
        );
    }
    // Different seeds give different samples somewhere among the four.
    let distinct: std::collections::HashSet<_> = batched
        .completions
        .iter()
        .map(|c| c.token_ids.clone())
        .collect();
    assert!(distinct.len() > 1, "four seeds gave one sample");
}

#[test]
fn prefix_cache_changes_work_not_results() {
    let rt = common::runtime();
    let shared = "Here is a long shared instruction that every question repeats. ".repeat(8);
    let requests: Vec<ChooseRequest> = (0..6)
        .map(|i| ChooseRequest {
            prompt: format!("{shared}Question {i}: is {i} even? Answer:"),
            options: vec![" yes".into(), " no".into(), " maybe not".into()],
        })
        .collect();
    let cold = common::engine_with(EngineOptions {
        prefix_cache: false,
        ..Default::default()
    });
    let warm = common::engine();
    let a = rt.block_on(cold.choose(requests.clone())).expect("cold");
    let b = rt.block_on(warm.choose(requests)).expect("warm");
    for (x, y) in a.iter().zip(&b) {
        for (o, p) in x.options.iter().zip(&y.options) {
            assert_eq!(o.logprob, p.logprob, "cache changed a log-prob");
        }
    }
    let cold_stats = rt.block_on(cold.stats());
    let warm_stats = rt.block_on(warm.stats());
    assert_eq!(cold_stats.prompt_tokens_reused, 0);
    assert!(warm_stats.prompt_tokens_reused > 0);
    assert!(
        warm_stats.prompt_tokens_computed * 2 < cold_stats.prompt_tokens_computed,
        "reuse should at least halve the work: {warm_stats:?} vs {cold_stats:?}"
    );
}

/// The options " 1" … " 10": " 10" is " 1" followed by "0", so the token
/// probability of " 1" holds the mass of " 10" too. `choose` must answer
/// with the distribution over complete answers; the reference here is
/// computed from independent `score` calls: P(exactly " 1") = P(" 1") −
/// P(" 10"), every other option keeps its own probability.
#[test]
fn multi_token_options_are_scored_exactly() {
    let engine = common::engine();
    let rt = common::runtime();
    let prompt = "On a scale from 1 to 10, I would rate this answer a";
    let options: Vec<String> = (1..=10).map(|i| format!(" {i}")).collect();
    let one = engine.tokenize(" 1", false);
    let ten = engine.tokenize(" 10", false);
    assert!(
        ten.len() > one.len() && ten.starts_with(&one),
        "\" 10\" should be \" 1\" and more tokens"
    );
    let chosen = rt
        .block_on(engine.choose(vec![ChooseRequest {
            prompt: prompt.into(),
            options: options.clone(),
        }]))
        .expect("choose")
        .remove(0);
    let total: f64 = chosen.options.iter().map(|o| o.prob).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let scored: Vec<f64> = options
        .iter()
        .map(|o| {
            rt.block_on(engine.score(vec![ScoreRequest {
                prompt: prompt.into(),
                continuation: o.clone(),
            }]))
            .expect("score")
            .remove(0)
            .total_logprob
        })
        .collect();
    let mut reference: Vec<f64> = scored.iter().map(|l| l.exp()).collect();
    reference[0] -= reference[9];
    assert!(reference[0] > 0.0, "P(exactly \" 1\") {}", reference[0]);
    let mass: f64 = reference.iter().sum();
    assert!(
        (chosen.mass - mass).abs() < 1e-4 * mass,
        "mass {} vs {mass}",
        chosen.mass
    );
    for (o, p) in chosen.options.iter().zip(&reference) {
        assert!(
            (o.logprob - p.ln()).abs() < 1e-4,
            "{}: choose {} vs score {}",
            o.text,
            o.logprob,
            p.ln()
        );
        assert!(
            (o.prob - p / mass).abs() < 1e-4,
            "{}: {} vs {}",
            o.text,
            o.prob,
            p / mass
        );
    }
    // Without the rule " 1" would keep " 10"'s mass: the difference is real.
    assert!(scored[0].exp() - reference[0] > 1e-6);
}

/// Options that share no prefix keep the plain sums of their tokens'
/// log-probs, and an option with no tokens is a clear error that leaves the
/// engine serving.
#[test]
fn options_without_prefixes_and_empty_tokenizations() {
    let engine = common::engine();
    let rt = common::runtime();
    let prompt = "The capital of France is";
    let options = vec![" Paris".to_string(), " Lyon".to_string()];
    let chosen = rt
        .block_on(engine.choose(vec![ChooseRequest {
            prompt: prompt.into(),
            options: options.clone(),
        }]))
        .expect("choose")
        .remove(0);
    for o in &chosen.options {
        let scored = rt
            .block_on(engine.score(vec![ScoreRequest {
                prompt: prompt.into(),
                continuation: o.text.clone(),
            }]))
            .expect("score")
            .remove(0);
        assert!((scored.total_logprob - o.logprob).abs() < 1e-4);
    }
    let duplicate = rt.block_on(engine.choose(vec![ChooseRequest {
        prompt: prompt.into(),
        options: vec![" Paris".into(), " Paris".into()],
    }]));
    assert!(duplicate.is_err_and(|e| e.is_input_error()));
    let again = rt.block_on(engine.choose(vec![ChooseRequest {
        prompt: prompt.into(),
        options,
    }]));
    assert!(again.is_ok());
}

#[test]
fn generation_stops_where_asked() {
    let engine = common::engine();
    let rt = common::runtime();
    let prompt = "1, 2, 3, 4, 5, 6,";
    let params = SamplingParams {
        max_tokens: 40,
        stop: vec![" 9".into()],
        ..Default::default()
    };
    let out = rt
        .block_on(engine.generate(vec![GenerateRequest::new(prompt, params)]))
        .expect("generate")
        .remove(0);
    let c = &out.completions[0];
    assert_eq!(c.finish_reason, FinishReason::Stop, "{:?}", c.text);
    assert!(
        !c.text.contains(" 9") && c.text.contains('8'),
        "{:?}",
        c.text
    );

    let short = SamplingParams {
        max_tokens: 3,
        ignore_eos: true,
        ..Default::default()
    };
    let out = rt
        .block_on(engine.generate(vec![GenerateRequest::new(prompt, short)]))
        .expect("generate")
        .remove(0);
    assert_eq!(out.completions[0].token_ids.len(), 3);
    assert_eq!(out.completions[0].finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 3);

    let chat = rt
        .block_on(engine.generate(vec![GenerateRequest::chat(
            vec![Message::user("Say hello.")],
            SamplingParams {
                max_tokens: 60,
                ..Default::default()
            },
        )]))
        .expect("chat")
        .remove(0);
    assert_eq!(chat.completions[0].finish_reason, FinishReason::Eos);
    assert!(!chat.completions[0].text.contains("<|im_end|>"));
}

#[test]
fn top_logprobs_are_reported_and_consistent() {
    let engine = common::engine();
    let rt = common::runtime();
    let mut req = GenerateRequest::new(
        "The capital of France is",
        SamplingParams {
            max_tokens: 4,
            ..Default::default()
        },
    );
    req.top_logprobs = Some(5);
    let out = rt
        .block_on(engine.generate(vec![req]))
        .expect("generate")
        .remove(0);
    let lps = out.completions[0].logprobs.as_ref().expect("logprobs");
    assert_eq!(lps.len(), out.completions[0].token_ids.len());
    for t in lps {
        assert_eq!(t.top.len(), 5);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t.top[0].id, t.id);
        assert!(t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let engine = common::engine();
    let rt = common::runtime();
    let empty = rt.block_on(engine.choose(vec![ChooseRequest {
        prompt: "x".into(),
        options: vec![],
    }]));
    assert!(empty.is_err_and(|e| e.is_input_error()));
    let long = "word ".repeat(9000);
    let too_long =
        rt.block_on(engine.generate(vec![GenerateRequest::new(long, SamplingParams::default())]));
    let err = too_long.expect_err("prompt longer than the context");
    assert!(
        err.is_input_error() && err.to_string().contains("context"),
        "{err}"
    );
    // The engine keeps serving after errors.
    let ok = rt.block_on(engine.score(vec![ScoreRequest {
        prompt: "Hello".into(),
        continuation: " world".into(),
    }]));
    assert!(ok.is_ok());
}

#[test]
fn progress_reports_every_sampled_token_as_the_answer_has_it() {
    let engine = common::engine();
    let rt = common::runtime();
    let mut request = GenerateRequest::new("Once upon a time", sampled(3, 10));
    request.n = 2;
    let plain = rt
        .block_on(engine.generate(vec![request.clone()]))
        .expect("generate")
        .remove(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let answer = rt
        .block_on(engine.generate_with_progress(request, tx))
        .expect("generate with progress");
    assert_eq!(answer, plain);
    let mut seen = vec![Vec::new(); 2];
    while let Ok((i, token)) = rx.try_recv() {
        seen[i].push(token);
    }
    for (i, c) in answer.completions.iter().enumerate() {
        assert!(!c.token_ids.is_empty());
        assert_eq!(seen[i], c.token_ids, "sample {i}");
        assert_eq!(engine.decode(&c.token_ids), c.text);
    }
}
