//! What stands between a request and the engine: the bearer key, the
//! bounded queue (429 with `Retry-After` when it is full), and the request
//! log with its metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::metrics::{log_request, Tokens};
use super::wire::ApiError;
use super::AppState;

/// The queue slot a request holds; a stream takes it out to keep it.
#[derive(Clone)]
pub struct QueueSlot(pub Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl QueueSlot {
    pub fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Compares two byte strings in time that depends on their lengths only,
/// not on where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Refuses requests without the configured bearer key.
pub async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
        next.run(req).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "a valid API key is needed: send it as `Authorization: Bearer KEY`",
        )
        .with_code("invalid_api_key")
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Lets at most `--max-queue` requests into the engine at once; the rest
/// are answered 429 at once instead of waiting in an unbounded line.
pub async fn queue(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match state.queue.clone().try_acquire_owned() {
        Ok(permit) => {
            // A streamed answer takes the slot along into its stream, so
            // the slot is held until the last event is sent.
            let slot = QueueSlot(Arc::new(std::sync::Mutex::new(Some(permit))));
            let mut req = req;
            req.extensions_mut().insert(slot.clone());
            let response = next.run(req).await;
            drop(slot);
            response
        }
        Err(_) => {
            state.metrics.busy();
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server has {} requests in flight, its limit; retry later",
                    state.max_queue
                ),
            )
            .with_code("queue_full")
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
    }
}

/// One log line and the metrics of every request.
pub async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Unknown paths share one label, so a scan cannot grow the metrics.
    let label = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let tokens = response
        .extensions()
        .get::<Tokens>()
        .copied()
        .unwrap_or_default();
    let elapsed = start.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.record(&label, status, elapsed, tokens);
    log_request(&method, &path, status, tokens, elapsed * 1e3);
    response
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"", b"x"));
        // A longer string that agrees where both have bytes.
        assert!(!constant_time_eq(b"abc\0", b"abc"));
    }
}
