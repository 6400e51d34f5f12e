//! The inspector's HTTP routes: the page and its assets (built into the
//! binary), the list of files, and each file's records a page at a time.

use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::files::{self, Kind, Loaded};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The most records one request returns.
const MAX_PAGE: usize = 10_000;

pub struct State {
    pub files: Vec<Loaded>,
}

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/files", get(list))
        .route("/api/files/{id}/records", get(records))
        .route("/api/files/{id}/document", get(document))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

type Shared = axum::extract::State<Arc<State>>;

async fn list(axum::extract::State(state): Shared) -> Json<Value> {
    let files: Vec<Value> = state
        .files
        .iter()
        .enumerate()
        .map(|(id, f)| {
            json!({
                "id": id,
                "name": f.path.display().to_string(),
                "kind": f.kind.name(),
                "count": f.count(),
                "principles": f.principles,
            })
        })
        .collect();
    Json(json!({ "files": files }))
}

#[derive(Deserialize)]
pub struct RecordsQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
    /// `disagree`: only pairs where the labeler did not side with the source.
    #[serde(default)]
    filter: Option<String>,
    /// `bias`: most position-biased first.
    #[serde(default)]
    sort: Option<String>,
    /// Text to look for in the record's strings.
    #[serde(default)]
    q: Option<String>,
}

fn default_limit() -> usize {
    20
}

fn no_such_file() -> Response {
    error(StatusCode::NOT_FOUND, "no such file")
}

async fn records(
    axum::extract::State(state): Shared,
    Path(id): Path<usize>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let query = files::Query {
        disagree: match q.filter.as_deref() {
            None | Some("") => false,
            Some("disagree") => true,
            Some(other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("filter {other}: the filter is disagree"),
                )
            }
        },
        by_bias: match q.sort.as_deref() {
            None | Some("") | Some("file") => false,
            Some("bias") => true,
            Some(other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("sort {other}: the sorts are file and bias"),
                )
            }
        },
        text: q.q.unwrap_or_default(),
    };
    if state.files.get(id).is_none() {
        return no_such_file();
    }
    if q.limit == 0 || q.limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit {}: from 1 to {MAX_PAGE}", q.limit),
        );
    }
    let (offset, limit) = (q.offset, q.limit);
    let work = tokio::task::spawn_blocking(move || -> std::io::Result<Value> {
        let f = &state.files[id];
        let picked = f.select(&query)?;
        let page: Vec<usize> = picked.iter().copied().skip(offset).take(limit).collect();
        let items: Vec<Value> = f
            .read(&page)?
            .into_iter()
            .zip(&page)
            .map(|(record, &i)| {
                let summary = f.summary(i);
                let mut item = json!({
                    "index": i,
                    "line": f.line(i),
                });
                if f.kind == Kind::Search {
                    item["chosen_path"] = json!(files::chosen_path(&record));
                }
                if matches!(f.kind, Kind::Labels | Kind::Ratings) {
                    item["agrees"] = json!(summary.agrees);
                    item["position_bias"] = json!(summary.position_bias);
                }
                item["record"] = record;
                item
            })
            .collect();
        Ok(json!({
            "kind": f.kind.name(),
            "total": f.count(),
            "matched": picked.len(),
            "offset": offset,
            "items": items,
        }))
    })
    .await;
    match work {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn document(axum::extract::State(state): Shared, Path(id): Path<usize>) -> Response {
    let Some(f) = state.files.get(id) else {
        return no_such_file();
    };
    match f.document() {
        Some(d) => Json(d.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this file is JSONL: its records are at /records",
        ),
    }
}
