//! The engine's targets for the mutation harness (`qstar_tasks::mutate`),
//! shared by the test run and the `fuzz` example.

use std::path::Path;

use qstar_core::Message;
use qstar_engine::chat::ChatTemplate;
use qstar_engine::llama::{KvCache, SeqStep};
use qstar_engine::LoadedModel;
use qstar_tasks::mutate::{mutate_binary, mutate_with, run_with, Report};

use crate::tiny_gguf::Gguf;

/// A run's report and how many inputs the reader accepted (loaded or
/// rendered): a run where nothing, or everything, passed would not have
/// tested the checks.
#[derive(Debug)]
pub struct Run {
    pub report: Report,
    pub accepted: usize,
}

/// Mutated copies of a small valid llama GGUF, mutations kept to the header
/// (magic, counts, metadata, tensor table) two times in three, since the
/// tensor bytes are most of the file and any values are valid there. A file
/// that loads is also run: one forward pass over three tokens, so shapes
/// the loader let through are used.
pub fn gguf_run(inputs: usize, seed: u64, scratch: &Path) -> std::io::Result<Run> {
    let model = Gguf::tiny_llama();
    let file = model.bytes();
    let header = model.header_len() as usize;
    let mut accepted = 0;
    let mut turn = 0u64;
    let report = run_with(
        std::slice::from_ref(&file),
        inputs,
        seed,
        file.len() + 4096,
        |seed, rng, max_len| {
            turn += 1;
            if turn.is_multiple_of(3) {
                mutate_binary(seed, rng, max_len)
            } else {
                let mut out = mutate_binary(&seed[..header], rng, max_len);
                out.extend_from_slice(&seed[header..]);
                out
            }
        },
        |input| {
            std::fs::write(scratch, input)?;
            if let Ok(model) = LoadedModel::load(scratch) {
                accepted += 1;
                let n_layer = model.llama.config.n_layer;
                let mut kv = KvCache::new(n_layer);
                let tokens = [0u32, 1, 2];
                let logits = model.llama.forward(&mut [SeqStep {
                    kv: &mut kv,
                    tokens: &tokens,
                    logits_from: 2,
                    output: Default::default(),
                }]);
                assert_eq!(logits.len(), 1);
                let _ = model.tokenizer.encode("ab ab", true);
                if let Some(chat) = &model.chat {
                    let _ = chat.render(&[Message::user("hi")], true);
                }
            }
            Ok(())
        },
    )?;
    Ok(Run { report, accepted })
}

/// Chat templates of the shapes model files carry (written for these
/// tests): a ChatML-like one with a default system turn, an [INST]-style
/// one that rejects a bad role order, and one that uses namespaces, loop
/// variables and Python string methods.
const TEMPLATES: &[&str] = &[
    "{% if messages[0].role != 'system' %}<|im_start|>system\nYou help.<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{{ bos_token }}{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content.strip() %}{% endif %}{% endfor %}{{ ns.system }}{% for m in messages if m.role != 'system' %}{{ '### ' ~ m.role.upper() ~ ': ' }}{{ m.content.replace('\\n', ' ') }}{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt and messages[-1].role.startswith('u') %}### ASSISTANT:{% endif %}",
];

/// Pieces of the template language spliced into the mutated templates, so
/// that mutations open loops and blocks, repeat and join strings, call
/// filters and methods: what a runaway template is made of.
const JINJA: &[&str] = &[
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "{% for x in range(100000) %}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if ",
    "{% elif ",
    "{% else %}",
    "{% endif %}",
    "{% set ns = namespace(s='ab') %}",
    "{% set ns.s = ns.s ~ ns.s %}",
    "{% macro f(a) %}{{ f(a) }}{% endmacro %}{{ f(1) }}",
    "{% raw %}",
    "{% endraw %}",
    " ~ ",
    " * 1000 ",
    " * 100000000 ",
    " + ",
    " | ",
    "| trim",
    "| join(',')",
    "| tojson",
    "| length",
    "| safe",
    "| default('x')",
    ".strip()",
    ".split()",
    ".startswith('u')",
    ".upper()",
    "[-1]",
    "[0]",
    "[1:]",
    "loop.index0",
    "loop.last",
    "messages",
    "m.content",
    "m.role",
    "add_generation_prompt",
    "bos_token",
    "raise_exception('x')",
    "'",
    "\"",
    "(",
    ")",
    "[",
    "]",
    ",",
    "none",
    "true",
];

/// Mutated chat templates, each compiled and, when it compiles, rendered on
/// a short conversation with and without the generation prompt.
pub fn chat_template_run(inputs: usize, seed: u64) -> Run {
    let seeds: Vec<Vec<u8>> = TEMPLATES.iter().map(|t| t.as_bytes().to_vec()).collect();
    let messages = [
        Message::system("Be brief."),
        Message::user("Hi there"),
        Message::assistant("Hello!"),
        Message::user("What is 2 + 2?"),
    ];
    let mut accepted = 0;
    let report = run_with(
        &seeds,
        inputs,
        seed,
        8192,
        |s, rng, max| mutate_with(s, rng, max, JINJA),
        |input| {
            let source = String::from_utf8_lossy(input);
            if let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") {
                let mut rendered = false;
                for generation_prompt in [false, true] {
                    rendered |= template.render(&messages, generation_prompt).is_ok();
                }
                accepted += rendered as usize;
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("the chat template run does no I/O: {e}"));
    Run { report, accepted }
}
