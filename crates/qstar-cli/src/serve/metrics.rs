//! Counters the server keeps, written out in Prometheus' text format, and
//! the one structured log line per request.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use qstar_engine::EngineStats;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Tokens a request used, attached to its response for the log and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens {
    pub prompt: usize,
    pub generated: usize,
}

#[derive(Default)]
pub struct Metrics {
    /// Requests by (path, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Cumulative counts per bucket, then the +Inf count.
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    rejected_busy: AtomicU64,
}

impl Metrics {
    pub fn record(&self, path: &str, status: u16, seconds: f64, tokens: Tokens) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((path.to_string(), status)).or_default() += 1;
        }
        for (bound, count) in BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(tokens.prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(tokens.generated as u64, Ordering::Relaxed);
    }

    /// Tokens of a streamed answer, counted when its stream ends.
    pub fn add_tokens(&self, tokens: Tokens) {
        self.prompt_tokens
            .fetch_add(tokens.prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(tokens.generated as u64, Ordering::Relaxed);
    }

    pub fn busy(&self) {
        self.rejected_busy.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text: `in_flight` requests hold a queue slot now.
    pub fn render(&self, in_flight: usize, max_queue: usize, engine: &EngineStats) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let name = metric(
            "qstar_requests_total",
            "counter",
            "Requests answered, by path and status.",
        );
        let mut lines = String::new();
        if let Ok(map) = self.requests.lock() {
            for ((path, status), n) in map.iter() {
                let _ = writeln!(
                    lines,
                    "{name}{{path=\"{}\",status=\"{status}\"}} {n}",
                    escape(path)
                );
            }
        }
        let mut out = out + &lines;
        let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "qstar_queue_depth",
            "gauge",
            "Requests in flight (queued or running in the engine).",
            in_flight.to_string(),
        );
        gauge(
            "qstar_queue_capacity",
            "gauge",
            "Requests allowed in flight before the server answers 429.",
            max_queue.to_string(),
        );
        gauge(
            "qstar_rejected_busy_total",
            "counter",
            "Requests refused with 429 because the queue was full.",
            self.rejected_busy.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "qstar_prompt_tokens_total",
            "counter",
            "Prompt tokens of answered requests.",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "qstar_generated_tokens_total",
            "counter",
            "Tokens generated for answered requests.",
            self.generated_tokens.load(Ordering::Relaxed).to_string(),
        );
        let looked_up = engine.prompt_tokens_reused + engine.prompt_tokens_computed;
        let hit_rate = if looked_up == 0 {
            0.0
        } else {
            engine.prompt_tokens_reused as f64 / looked_up as f64
        };
        gauge(
            "qstar_prefix_cache_hit_rate",
            "gauge",
            "Share of prompt tokens the engine took from its prefix cache.",
            format!("{hit_rate}"),
        );
        gauge(
            "qstar_prefix_cache_bytes",
            "gauge",
            "Memory held by the prefix cache.",
            engine.prefix_cache_bytes.to_string(),
        );
        gauge(
            "qstar_engine_forward_passes_total",
            "counter",
            "Forward passes the engine ran.",
            engine.forward_passes.to_string(),
        );
        gauge(
            "qstar_engine_sequences_running",
            "gauge",
            "Sequences the engine is computing now.",
            engine.sequences_active.to_string(),
        );
        gauge(
            "qstar_engine_sequences_waiting",
            "gauge",
            "Sequences queued in the engine, not yet admitted.",
            engine.sequences_waiting.to_string(),
        );
        gauge(
            "qstar_engine_tokens_generated_total",
            "counter",
            "Tokens the engine sampled, answered or not.",
            engine.tokens_generated.to_string(),
        );
        gauge(
            "qstar_engine_jobs_cancelled_total",
            "counter",
            "Engine jobs dropped because their client went away.",
            engine.jobs_cancelled.to_string(),
        );
        let name = "qstar_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's arrival to its answer.\n# TYPE {name} histogram"
        );
        for (bound, count) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The request log: one JSON object per line on stderr.
pub fn log_request(method: &str, path: &str, status: u16, tokens: Tokens, millis: f64) {
    let line = serde_json::json!({
        "method": method,
        "path": path,
        "status": status,
        "prompt_tokens": tokens.prompt,
        "generated_tokens": tokens.generated,
        "ms": (millis * 10.0).round() / 10.0,
    });
    crate::report::Reporter::default().note(&line.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_requests_counted_by_label() {
        let m = Metrics::default();
        m.record("/v1/completions", 200, 0.02, Tokens::default());
        m.record("/v1/completions", 200, 3.0, Tokens::default());
        m.record("/health", 404, 100.0, Tokens::default());
        let text = m.render(0, 4, &EngineStats::default());
        assert!(text.contains("qstar_requests_total{path=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("qstar_requests_total{path=\"/health\",status=\"404\"} 1"));
        assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"30\"} 2"));
        assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("qstar_request_duration_seconds_count 3"));
    }
}
