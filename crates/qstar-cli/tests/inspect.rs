//! `qstar inspect` on files the binary wrote (label, rate and solve output,
//! a training run's metrics.jsonl, a sweep.json under tests/data/inspect):
//! its JSON endpoints return what the files hold, a broken or missing file
//! is exit 2 naming it, and in a real browser (Debian's chromium driven
//! through chromedriver) the page shows the pairs, the trees and the curves.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/inspect")
        .join(name)
}

fn jsonl(name: &str) -> Vec<Value> {
    std::fs::read_to_string(data(name))
        .expect("sample file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("sample record"))
        .collect()
}

/// A running `qstar inspect`, killed when dropped.
struct Inspector {
    child: Child,
    url: String,
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `qstar inspect FILES --port 0` and reads the address it listens
/// on from its stderr.
fn start(files: &[PathBuf]) -> Inspector {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .arg("inspect")
        .args(files)
        .args(["--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qstar inspect");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on ") {
                let _ = tx.send(
                    line[at + "listening on ".len()..]
                        .trim_end_matches('/')
                        .to_string(),
                );
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("qstar inspect did not say where it listens");
    Inspector { child, url }
}

fn all_samples() -> Vec<PathBuf> {
    [
        "labeled.jsonl",
        "rate.jsonl",
        "mcts.jsonl",
        "beam.jsonl",
        "metrics.jsonl",
        "sweep.json",
    ]
    .iter()
    .map(|n| data(n))
    .collect()
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn records(server: &Inspector, id: usize, query: &str) -> Value {
    let (status, body) = get(&format!("{}/api/files/{id}/records?{query}", server.url)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn items_records(page: &Value) -> Vec<Value> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["record"].clone())
        .collect()
}

/// The position bias of a label record, computed here from its judgements:
/// per principle judged in both orders |P(A) one way + P(A) the other − 1|,
/// averaged.
fn bias(record: &Value) -> Option<f64> {
    let js = record["judgements"].as_array()?;
    let mut leans = Vec::new();
    let mut seen = Vec::new();
    for j in js {
        let p = j["principle"].as_u64()?;
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        let side = |first: bool| {
            js.iter()
                .find(|k| k["principle"].as_u64() == Some(p) && k["human_chosen_first"] == first)
                .and_then(|k| k["p_a"].as_f64())
        };
        if let (Some(a), Some(b)) = (side(true), side(false)) {
            leans.push((a + b - 1.0).abs());
        }
    }
    (!leans.is_empty()).then(|| leans.iter().sum::<f64>() / leans.len() as f64)
}

/// The nodes from the root to the finished node whose steps spell the
/// record's solution, found here by walking the tree.
fn solution_path(record: &Value) -> Vec<u64> {
    let nodes = record["tree"]["nodes"].as_array().expect("nodes");
    let solution = record["solution"].as_str().expect("solution");
    let path_to = |id: u64| {
        let mut path = vec![id];
        let mut at = nodes[id as usize]["parent"].as_u64();
        while let Some(p) = at {
            path.push(p);
            at = nodes[p as usize]["parent"].as_u64();
        }
        path.reverse();
        path
    };
    let spelled = |path: &[u64]| -> String {
        path.iter()
            .map(|&i| nodes[i as usize]["text"].as_str().unwrap_or(""))
            .collect()
    };
    let finished: Vec<Vec<u64>> = nodes
        .iter()
        .filter(|n| n["finished"] == true)
        .map(|n| path_to(n["id"].as_u64().expect("id")))
        .filter(|p| spelled(p) == solution)
        .collect();
    let with_answer = finished
        .iter()
        .find(|p| nodes[*p.last().expect("leaf") as usize]["answer"] == record["answer"]);
    with_answer
        .or(finished.first())
        .cloned()
        .expect("a finished node spells the solution")
}

#[tokio::test]
async fn the_file_list_names_each_file_with_its_kind_and_record_count() {
    let server = start(&all_samples());
    let (status, body) = get(&format!("{}/api/files", server.url)).await;
    assert_eq!(status, 200);
    let sweep: Value =
        serde_json::from_str(&std::fs::read_to_string(data("sweep.json")).expect("sweep"))
            .expect("sweep json");
    let expected = [
        ("labeled.jsonl", "labels", jsonl("labeled.jsonl").len()),
        ("rate.jsonl", "ratings", jsonl("rate.jsonl").len()),
        ("mcts.jsonl", "search", jsonl("mcts.jsonl").len()),
        ("beam.jsonl", "search", jsonl("beam.jsonl").len()),
        ("metrics.jsonl", "metrics", jsonl("metrics.jsonl").len()),
        (
            "sweep.json",
            "sweep",
            sweep["rows"].as_array().expect("rows").len(),
        ),
    ];
    let files = body["files"].as_array().expect("files");
    assert_eq!(files.len(), expected.len());
    for (f, (name, kind, count)) in files.iter().zip(expected) {
        assert!(f["name"].as_str().expect("name").ends_with(name), "{f}");
        assert_eq!(f["kind"], kind, "{f}");
        assert_eq!(f["count"], count, "{f}");
    }
    assert_eq!(jsonl("labeled.jsonl").len(), 12);
    // The labels' principles come from the job's config file beside them.
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(data("labeled.jsonl.config.json")).expect("config"),
    )
    .expect("config json");
    assert_eq!(files[0]["principles"], config["constitution"]["principles"]);
    assert_eq!(files[1]["principles"], json!([]));
}

#[tokio::test]
async fn records_come_back_as_the_files_hold_them_a_page_at_a_time() {
    let server = start(&all_samples());
    for (id, name) in [
        (0, "labeled.jsonl"),
        (1, "rate.jsonl"),
        (3, "beam.jsonl"),
        (4, "metrics.jsonl"),
    ] {
        let want = jsonl(name);
        let mut got = Vec::new();
        let mut lines = Vec::new();
        for offset in (0..want.len() + 5).step_by(5) {
            let page = records(&server, id, &format!("offset={offset}&limit=5")).await;
            assert_eq!(page["total"], want.len(), "{name}");
            assert_eq!(page["matched"], want.len(), "{name}");
            assert!(page["items"].as_array().expect("items").len() <= 5);
            for item in page["items"].as_array().expect("items") {
                lines.push(item["line"].as_u64().expect("line"));
            }
            got.extend(items_records(&page));
        }
        assert_eq!(got, want, "{name}");
        // Each record's line is its line in the file (no blank lines here).
        assert_eq!(lines, (1..=want.len() as u64).collect::<Vec<_>>(), "{name}");
    }
    let (status, doc) = get(&format!("{}/api/files/5/document", server.url)).await;
    assert_eq!(status, 200);
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(data("sweep.json")).expect("sweep"))
            .expect("sweep json");
    assert_eq!(doc, want);
}

#[tokio::test]
async fn a_big_file_is_served_a_page_at_a_time_with_its_own_line_numbers() {
    // 6,000 label records (the sample over and over) with blank lines
    // between some of them: a page holds only what it asks for, and each
    // record keeps the line it has in the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = std::fs::read_to_string(data("labeled.jsonl"))
        .expect("labels")
        .lines()
        .map(String::from)
        .collect();
    let mut text = String::new();
    let mut file_line = 0usize;
    let mut where_: Vec<(usize, usize)> = Vec::new(); // (file line, sample index)
    for i in 0..6000 {
        if i % 1000 == 999 {
            text.push('\n');
            file_line += 1;
        }
        text.push_str(&lines[i % lines.len()]);
        text.push('\n');
        file_line += 1;
        where_.push((file_line, i % lines.len()));
    }
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, text).expect("write");
    let server = start(&[big]);
    let page = records(&server, 0, "offset=5990&limit=20").await;
    assert_eq!(page["total"], 6000);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 10);
    let sample = jsonl("labeled.jsonl");
    for (k, item) in items.iter().enumerate() {
        let (line, from) = where_[5990 + k];
        assert_eq!(item["line"], line);
        assert_eq!(item["index"], 5990 + k);
        assert_eq!(item["record"], sample[from]);
    }
    let page = records(&server, 0, "filter=disagree&limit=20").await;
    let per_copy = sample
        .iter()
        .filter(|r| r["agrees_with_human"] == false)
        .count();
    assert_eq!(page["matched"], 500 * per_copy);
    assert_eq!(page["items"].as_array().expect("items").len(), 20);
    let (status, _) = get(&format!("{}/api/files/0/records?limit=10001", server.url)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_disagreement_filter_and_the_bias_sort_follow_the_labels() {
    let server = start(&[data("labeled.jsonl"), data("rate.jsonl")]);
    let labels = jsonl("labeled.jsonl");
    let disagreeing: Vec<&Value> = labels
        .iter()
        .filter(|r| r["agrees_with_human"] == false)
        .collect();
    assert!(!disagreeing.is_empty() && disagreeing.len() < labels.len());
    let page = records(&server, 0, "filter=disagree&limit=100").await;
    assert_eq!(page["matched"], disagreeing.len());
    assert_eq!(page["total"], labels.len());
    let got = items_records(&page);
    assert_eq!(got.iter().collect::<Vec<_>>(), disagreeing);

    let page = records(&server, 0, "sort=bias&limit=100").await;
    let order: Vec<f64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let b = bias(&i["record"]).expect("both orders");
            let served = i["position_bias"].as_f64().expect("bias");
            assert!((b - served).abs() < 1e-12, "{b} vs {served}");
            b
        })
        .collect();
    assert_eq!(order.len(), labels.len());
    assert!(order.windows(2).all(|w| w[0] >= w[1]), "{order:?}");
    let mut sorted: Vec<f64> = labels.iter().filter_map(bias).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(order, sorted);

    // Both together: the disagreeing pairs, most biased first.
    let page = records(&server, 0, "filter=disagree&sort=bias&limit=2").await;
    assert_eq!(page["matched"], disagreeing.len());
    let mut want: Vec<&Value> = disagreeing.clone();
    want.sort_by(|a, b| bias(b).unwrap_or(0.0).total_cmp(&bias(a).unwrap_or(0.0)));
    assert_eq!(
        items_records(&page).iter().collect::<Vec<_>>(),
        want[..2].to_vec()
    );

    // Ratings disagree when the source's choice is not rewarded higher.
    let rates = jsonl("rate.jsonl");
    let lower = rates
        .iter()
        .filter(|r| {
            r["reward_chosen"].as_f64().expect("reward")
                <= r["reward_rejected"].as_f64().expect("reward")
        })
        .count();
    let page = records(&server, 1, "filter=disagree").await;
    assert_eq!(page["matched"], lower);
}

#[tokio::test]
async fn text_search_finds_the_records_that_hold_the_text_in_any_case() {
    let server = start(&[data("labeled.jsonl"), data("mcts.jsonl")]);
    let labels = jsonl("labeled.jsonl");
    let holding: Vec<u64> = labels
        .iter()
        .filter(|r| r.to_string().to_lowercase().contains("bleach"))
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert!(!holding.is_empty());
    let page = records(&server, 0, "q=BLEACH&limit=100").await;
    let got: Vec<u64> = items_records(&page)
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(got, holding);
    let page = records(&server, 0, "q=no%20such%20words%20anywhere").await;
    assert_eq!(page["matched"], 0);
    let page = records(&server, 1, "q=78%20%2B%2067").await;
    assert_eq!(page["matched"], 1);
    assert_eq!(items_records(&page)[0]["question"], "What is 78 + 67?");
}

#[tokio::test]
async fn each_searched_question_comes_with_the_path_to_its_solution() {
    let server = start(&[data("mcts.jsonl"), data("beam.jsonl")]);
    for (id, name) in [(0, "mcts.jsonl"), (1, "beam.jsonl")] {
        let page = records(&server, id, "limit=100").await;
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), jsonl(name).len());
        for item in items {
            let want = solution_path(&item["record"]);
            let got: Vec<u64> = item["chosen_path"]
                .as_array()
                .expect("chosen_path")
                .iter()
                .map(|v| v.as_u64().expect("id"))
                .collect();
            assert_eq!(got, want, "{name} line {}", item["line"]);
            assert!(got.len() >= 2, "a path below the root");
        }
    }
}

#[tokio::test]
async fn the_page_is_built_in_and_fetches_nothing_from_elsewhere() {
    let server = start(&[data("metrics.jsonl")]);
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", server.url))
            .await
            .expect("asset");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let ct = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let body = r.text().await.expect("body");
        for outside in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "fetch(\"http",
            "import ",
        ] {
            assert!(!body.contains(outside), "{path} refers outside: {outside}");
        }
    }
    let (status, body) = get(&format!("{}/api/files/7/records", server.url)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&format!("{}/api/files/0/records?limit=0", server.url)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&format!("{}/api/files/0/records?sort=sideways", server.url)).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(&format!("{}/api/files/0/document", server.url)).await;
    assert_eq!(status, 404);
}

fn run_inspect(files: &[&Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .arg("inspect")
        .args(files)
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run qstar inspect");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_broken_file_is_exit_2_naming_the_file_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = std::fs::read_to_string(data("labeled.jsonl"))
        .expect("labels")
        .lines()
        .map(String::from)
        .collect();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    // Not JSON on line 3.
    let cut = write(
        "cut.jsonl",
        format!("{}\n{}\n{}\n", lines[0], lines[1], &lines[2][..40]),
    );
    let (code, err) = run_inspect(&[&cut]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:3: not JSON", cut.display())),
        "{err}"
    );
    // A label file whose second record lacks its soft label.
    let mut second: Value = serde_json::from_str(&lines[1]).expect("record");
    second.as_object_mut().expect("object").remove("soft_label");
    let missing = write("missing.jsonl", format!("{}\n{second}\n", lines[0]));
    let (code, err) = run_inspect(&[&missing]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:2: a label record", missing.display()))
            && err.contains("soft_label"),
        "{err}"
    );
    // A record qstar never writes.
    let other = write("other.jsonl", "{\"hello\": 1}\n".into());
    let (code, err) = run_inspect(&[&other]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:1: not a record", other.display())),
        "{err}"
    );
    // A solve record whose tree points at a node it does not have.
    let mut solve = jsonl("mcts.jsonl").remove(0);
    solve["tree"]["nodes"][1]["children"] = json!([99]);
    let dangling = write("dangling.jsonl", format!("{solve}\n"));
    let (code, err) = run_inspect(&[&dangling]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:1: a solve record", dangling.display())) && err.contains("99"),
        "{err}"
    );
    // A sweep.json cut short: the line of the document where it broke.
    let sweep = std::fs::read_to_string(data("sweep.json")).expect("sweep");
    let head: String = sweep.lines().take(10).collect::<Vec<_>>().join("\n");
    let short = write("sweep.json", head);
    let (code, err) = run_inspect(&[&short]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:10: not JSON", short.display())),
        "{err}"
    );
    // One good file does not let a broken one through.
    let (code, _) = run_inspect(&[&data("metrics.jsonl"), &cut]);
    assert_eq!(code, 2);
}

#[test]
fn a_missing_file_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gone = dir.path().join("gone.jsonl");
    let (code, err) = run_inspect(&[&data("labeled.jsonl"), &gone]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}: no such file", gone.display())),
        "{err}"
    );
    // A directory without a run's or a sweep's files.
    let (code, err) = run_inspect(&[dir.path()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("metrics.jsonl or sweep.json"), "{err}");
}

// ------------------------------------------------------------ the browser

/// An executable on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Records a skip the way the data tests do: printed, appended to
/// `QSTAR_SKIP_LOG`, and a failure under `QSTAR_REQUIRE_SHARED` (CI).
fn skip(test: &str, why: &str) {
    let reason = format!("skipped {test}: {why}");
    if std::env::var_os("QSTAR_REQUIRE_SHARED").is_some() {
        panic!("{reason}; QSTAR_REQUIRE_SHARED is set, so this is a failure");
    }
    eprintln!("{reason}");
    if let Some(log) = std::env::var_os("QSTAR_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{reason}");
        }
    }
}

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{}/status", driver.url)).await {
            if r.status().is_success() {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not come up");
}

use fantoccini::{Client, Locator};

async fn wait_for_count(client: &Client, css: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len());
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn save_shot(client: &Client, dir: &Path, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 10_000, "a screenshot of a drawn page");
    let path = dir.join(name);
    std::fs::write(&path, &png).expect("write screenshot");
    // To look at the page: QSTAR_SCREENSHOT_DIR keeps a copy.
    if let Some(keep) = std::env::var_os("QSTAR_SCREENSHOT_DIR") {
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::write(Path::new(&keep).join(name), &png);
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_pairs_trees_and_curves_in_chromium() {
    let test = "the_page_shows_pairs_trees_and_curves_in_chromium";
    let Some(chromium) = on_path(&["chromium", "chromium-browser"]) else {
        skip(test, "chromium is not installed (apt-get install chromium)");
        return;
    };
    let Some(chromedriver) = on_path(&["chromedriver"]) else {
        skip(
            test,
            "chromedriver is not installed (apt-get install chromium-driver)",
        );
        return;
    };
    let server = start(&[
        data("labeled.jsonl"),
        data("mcts.jsonl"),
        data("metrics.jsonl"),
        data("sweep.json"),
    ]);
    let driver = start_driver(&chromedriver).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let shots = tempfile::tempdir().expect("screenshot dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1400",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("chromium through chromedriver");
    let result = browse(&client, &server, shots.path()).await;
    let _ = client.close().await;
    drop(driver);
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn browse(client: &Client, server: &Inspector, shots: &Path) -> Result<(), String> {
    let wait = |css: &'static str| async move {
        client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))
    };
    let e = |e: fantoccini::error::CmdError| e.to_string();

    // Labels: every pair, the soft label as the file has it.
    let labels = jsonl("labeled.jsonl");
    client
        .goto(&format!("{}/#file=0", server.url))
        .await
        .map_err(e)?;
    wait(".card.pair").await?;
    let count = client.find(Locator::Css("#pair-count")).await.map_err(e)?;
    assert_eq!(count.text().await.map_err(e)?, labels.len().to_string());
    assert_eq!(
        wait_for_count(client, ".card.pair", labels.len()).await,
        labels.len()
    );
    let cards = client
        .find_all(Locator::Css(".card.pair"))
        .await
        .map_err(e)?;
    for (card, record) in cards.iter().zip(&labels) {
        let soft = card.find(Locator::Css(".soft-label")).await.map_err(e)?;
        let value: f64 = soft
            .attr("data-value")
            .await
            .map_err(e)?
            .and_then(|v| v.parse().ok())
            .ok_or("no soft label value")?;
        let want = record["soft_label"].as_f64().ok_or("soft_label")?;
        assert_eq!(value, want);
        assert_eq!(soft.text().await.map_err(e)?, format!("{want:.3}"));
    }
    // Both orders: a row per principle.
    let rows = cards[0]
        .find_all(Locator::Css("table.orders tbody tr"))
        .await
        .map_err(e)?;
    let principles: std::collections::BTreeSet<u64> = labels[0]["judgements"]
        .as_array()
        .ok_or("judgements")?
        .iter()
        .filter_map(|j| j["principle"].as_u64())
        .collect();
    assert_eq!(rows.len(), principles.len());
    // Each principle named as the job's config file names it.
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(data("labeled.jsonl.config.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    for row in &rows {
        let index: usize = row
            .attr("data-principle")
            .await
            .map_err(e)?
            .and_then(|v| v.parse().ok())
            .ok_or("data-principle")?;
        let named = row
            .find(Locator::Css(".principle-text"))
            .await
            .map_err(e)?
            .attr("title")
            .await
            .map_err(e)?
            .unwrap_or_default();
        assert_eq!(
            named,
            config["constitution"]["principles"][index]
                .as_str()
                .ok_or("principle")?
        );
    }
    save_shot(client, shots, "labels.png").await;

    // The filter hides the pairs that agree with the source.
    let disagreeing: Vec<String> = labels
        .iter()
        .filter(|r| r["agrees_with_human"] == false)
        .map(|r| r["line"].to_string())
        .collect();
    client
        .find(Locator::Css("#only-disagree"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    assert_eq!(
        wait_for_count(client, ".card.pair", disagreeing.len()).await,
        disagreeing.len()
    );
    let mut shown = Vec::new();
    for card in client
        .find_all(Locator::Css(".card.pair"))
        .await
        .map_err(e)?
    {
        let class = card.attr("class").await.map_err(e)?.unwrap_or_default();
        assert!(class.split(' ').any(|c| c == "disagree"), "{class}");
        shown.push(card.attr("data-line").await.map_err(e)?.unwrap_or_default());
    }
    assert_eq!(shown, disagreeing);
    save_shot(client, shots, "labels-disagreeing.png").await;

    // Search: the chosen path is marked, a closed step opens on its text.
    let solved = jsonl("mcts.jsonl");
    client
        .find(Locator::Css("#file-1"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    wait(".card.question .node").await?;
    let first = client
        .find(Locator::Css(".card.question"))
        .await
        .map_err(e)?;
    let mut marked = Vec::new();
    for node in first
        .find_all(Locator::Css(".node.chosen"))
        .await
        .map_err(e)?
    {
        marked.push(
            node.attr("data-id")
                .await
                .map_err(e)?
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("data-id")?,
        );
    }
    assert_eq!(marked, solution_path(&solved[0]));
    let closed = first
        .find(Locator::Css(".node.collapsed"))
        .await
        .map_err(e)?;
    let id: usize = closed
        .attr("data-id")
        .await
        .map_err(e)?
        .and_then(|v| v.parse().ok())
        .ok_or("data-id")?;
    let text = closed
        .find(Locator::Css(":scope > .body > .text"))
        .await
        .map_err(e)?;
    assert!(
        !text.is_displayed().await.map_err(e)?,
        "a closed step hides its text"
    );
    closed
        .find(Locator::Css(":scope > .head > .toggle"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    assert!(
        text.is_displayed().await.map_err(e)?,
        "an opened step shows its text"
    );
    let want = solved[0]["tree"]["nodes"][id]["text"]
        .as_str()
        .ok_or("text")?
        .trim();
    assert_eq!(text.text().await.map_err(e)?.trim(), want);
    let tokens = first.find(Locator::Css(".tokens")).await.map_err(e)?;
    assert_eq!(
        tokens.text().await.map_err(e)?.replace(',', ""),
        solved[0]["compute"]["tokens_generated"].to_string()
    );
    save_shot(client, shots, "search.png").await;

    // Runs: a curve point per metrics row, a sweep line per strategy.
    let metrics = jsonl("metrics.jsonl");
    client
        .find(Locator::Css("#file-2"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    let loss = wait("#chart-loss polyline.series-loss").await?;
    let points = loss.attr("points").await.map_err(e)?.unwrap_or_default();
    assert_eq!(points.split_whitespace().count(), metrics.len());
    let lr = client
        .find(Locator::Css("#chart-lr polyline.series-lr"))
        .await
        .map_err(e)?;
    let points = lr.attr("points").await.map_err(e)?.unwrap_or_default();
    assert_eq!(points.split_whitespace().count(), metrics.len());
    save_shot(client, shots, "metrics.png").await;

    let sweep: Value = serde_json::from_str(
        &std::fs::read_to_string(data("sweep.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    client
        .find(Locator::Css("#file-3"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    wait("#chart-sweep polyline").await?;
    let rows = sweep["rows"].as_array().ok_or("rows")?;
    for strategy in ["greedy", "majority", "best-of-n", "beam"] {
        let line = client
            .find(Locator::Css(&format!(
                "#chart-sweep polyline[data-series=\"{strategy}\"]"
            )))
            .await
            .map_err(e)?;
        let points = line.attr("points").await.map_err(e)?.unwrap_or_default();
        let want = rows.iter().filter(|r| r["strategy"] == strategy).count();
        assert_eq!(points.split_whitespace().count(), want, "{strategy}");
    }
    save_shot(client, shots, "sweep.png").await;
    Ok(())
}
