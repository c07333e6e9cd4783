//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against five real `quic-peer` processes.
//!
//! Skips with a message where no browser can start (no chromium or
//! chromedriver installed, or the session is refused);
//! `QUIC_PEER_REQUIRE_BROWSER=1` turns that skip into a failure (CI sets it).

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{get, get_bytes, sample};
use common::{random_bytes, Proc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const REQUIRE: &str = "QUIC_PEER_REQUIRE_BROWSER";
const IDLE_TIMEOUT: f64 = 3.0;

/// Skips the test (or fails it, when a browser is required).
fn skip(why: &str) {
    if std::env::var_os(REQUIRE).is_some_and(|v| v != "0") {
        panic!("{REQUIRE} is set but {why}");
    }
    eprintln!("SKIPPED: the browser test needs headless Chromium: {why}");
}

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<String> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(String::from)
}

fn start_driver() -> Result<Driver, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("chromedriver does not start: {e}"))?;
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("chromedriver did not listen within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(driver)
}

async fn browser(
    driver: &Driver,
    binary: &str,
    profile: &std::path::Path,
) -> Result<Client, String> {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": binary,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().cloned().unwrap_or_default();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .map_err(|e| format!("the browser session did not start: {e}"))
}

/// Runs `script` (which returns a value) until `ok` holds for its result;
/// returns the result and how long it took. Panics after `timeout`.
async fn until(
    c: &Client,
    what: &str,
    script: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.expect("the script runs");
        if ok(&v) {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; last {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `text` into the element `css`.
async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
}

/// Clicks the element `css`.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// A node process and its dashboard's address.
struct Node {
    proc: Proc,
    addr: String,
    id: String,
    url: String,
    _dir: tempfile::TempDir,
}

fn start_node(bootstrap: Option<&str>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let idle = IDLE_TIMEOUT.to_string();
    let (mut proc, addr, id) =
        common::spawn_node(dir.path(), &idle, bootstrap, &["--http", "127.0.0.1:0"]);
    let http = proc.expect_line("[HTTP] dashboard at ", Duration::from_secs(20));
    let url = http
        .split("dashboard at ")
        .nth(1)
        .expect("a URL")
        .trim()
        .to_string();
    Node {
        proc,
        addr: addr.to_string(),
        id: id.to_string(),
        url,
        _dir: dir,
    }
}

/// `http://HOST:PORT` of a dashboard URL.
fn base(url: &str) -> &str {
    url.split("/?").next().unwrap_or(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_the_network_and_acts_with_the_token() {
    let Some(binary) = chromium() else {
        return skip("no chromium binary is installed");
    };
    let driver = match start_driver() {
        Ok(d) => d,
        Err(why) => return skip(&why),
    };
    let profile = tempfile::tempdir().expect("tempdir");
    let c = match browser(&driver, &binary, profile.path()).await {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };

    let mut nodes = vec![start_node(None)];
    let boot = nodes[0].addr.clone();
    for _ in 1..5 {
        nodes.push(start_node(Some(&boot)));
    }

    // Read-only: the page of node 0 without its token.
    c.goto(&format!("{}/", base(&nodes[0].url)))
        .await
        .expect("goto");
    let (_, took) = until(
        &c,
        "five nodes in the picture",
        "return document.querySelectorAll('#graph g.node').length",
        Duration::from_secs(30),
        |v| v == 5,
    )
    .await;
    let (links, _) = until(
        &c,
        "the links between them",
        "return document.querySelectorAll('#graph line.link').length",
        Duration::from_secs(20),
        |v| v.as_u64() >= Some(10),
    )
    .await;
    println!("5 nodes drawn after {took:?}, with {links} links");
    let (rows, _) = until(
        &c,
        "the peer table",
        "return document.querySelectorAll('#peers tbody tr[data-id]').length",
        Duration::from_secs(10),
        |v| v == 4,
    )
    .await;
    assert_eq!(rows, 4);
    let readonly = c
        .execute(
            "const b = document.getElementById('readonly'); return !!b && !b.hidden && b.offsetParent !== null",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        readonly, true,
        "without the token the page says it is read-only"
    );

    // An action without the token is refused, and the page says why.
    type_into(&c, "#get-target", &"0".repeat(52)).await;
    click(&c, "#get-button").await;
    let (err, _) = until(
        &c,
        "the refusal",
        "return document.getElementById('action-error').textContent",
        Duration::from_secs(10),
        |v| v.as_str().is_some_and(|s| s.contains("token")),
    )
    .await;
    println!("without the token: {err}");

    // A node killed disappears from the picture within the idle timeout.
    let victim = nodes.pop().expect("node 4");
    let gone = format!(
        "return document.querySelector('#graph g.node[data-id=\"{}\"]') === null && document.querySelectorAll('#graph g.node').length",
        victim.id
    );
    victim.proc.signal("KILL");
    let (_, took) = until(
        &c,
        "the killed node to go",
        &gone,
        Duration::from_secs(30),
        |v| v == 4,
    )
    .await;
    println!("the killed node left the picture after {took:?} (idle timeout {IDLE_TIMEOUT} s)");
    assert!(
        took.as_secs_f64() <= IDLE_TIMEOUT + 5.0,
        "gone within the idle timeout (plus the page's one-second refresh and gossip)"
    );
    drop(victim);

    // With the token: store a file from the browser.
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 6 << 20;
    let data = random_bytes(size, 11);
    let src = dir.path().join("from-the-browser.bin");
    std::fs::write(&src, &data).expect("write");
    c.goto(&nodes[0].url).await.expect("goto with token");
    type_into(&c, "#put-file", &src.display().to_string()).await;
    click(&c, "#put-button").await;
    let (ticket, took) = until(
        &c,
        "the ticket of the stored file",
        "const t = document.querySelector('#put-result .ticket'); return t ? t.textContent.trim() : (document.getElementById('action-error').textContent || '')",
        Duration::from_secs(60),
        |v| v.as_str().is_some_and(|s| s.starts_with("qpt")),
    )
    .await;
    let ticket = ticket.as_str().unwrap_or_default().to_string();
    let id = c
        .execute(
            "return document.querySelector('#put-result .id').textContent.trim()",
            vec![],
        )
        .await
        .expect("the id");
    let id = id.as_str().unwrap_or_default().to_string();
    println!("stored from the browser in {took:?}: {id}");
    let copies = format!(
        "const r = document.querySelector('#files tr[data-id=\"{id}\"] td.copies'); return r ? Number(r.textContent) : 0"
    );
    let (n, _) = until(
        &c,
        "the file with its copies",
        &copies,
        Duration::from_secs(30),
        |v| v.as_u64() >= Some(4),
    )
    .await;
    println!("node 0 lists the file with {n} copies (its own and 3 others)");

    // A get started from another node's page: progress, then a download
    // link serving exactly the file.
    let getter = &nodes[1];
    let (_, before) = tokio::task::spawn_blocking({
        let m = format!("{}/metrics", base(&getter.url));
        move || get(&m, &[])
    })
    .await
    .expect("scrape");
    c.goto(&getter.url).await.expect("goto the getter");
    type_into(&c, "#get-target", &ticket).await;
    click(&c, "#get-button").await;
    let (href, took) = until(
        &c,
        "the download link",
        "const a = document.querySelector('.transfer[data-state=\"done\"] a.download'); return a ? a.href : null",
        Duration::from_secs(60),
        |v| v.is_string(),
    )
    .await;
    let shown = c
        .execute(
            "const t = document.querySelector('.transfer[data-state=\"done\"]'); const p = t && t.querySelector('progress'); return p ? [p.value, p.max] : null",
            vec![],
        )
        .await
        .expect("script");
    println!("fetched from the page in {took:?}; progress shown {shown}");
    assert_eq!(shown, json!([size, size]), "the progress bar ends full");
    let href = href.as_str().unwrap_or_default().to_string();
    let m = format!("{}/metrics", base(&getter.url));
    let ((status, body), (_, after)) =
        tokio::task::spawn_blocking(move || (get_bytes(&href), get(&m, &[])))
            .await
            .expect("download");
    assert_eq!(status, 200);
    assert!(
        body == data,
        "the download link serves the file byte for byte"
    );
    let name = "quic_peer_transport_bytes_total{direction=\"in\"}";
    let grew = sample(&after, name) - sample(&before, name);
    println!("node 1 received {grew} transport bytes for a {size}-byte file");
    assert!(grew >= size as f64);

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(&shot, png);
        println!("screenshot: {}", shot.display());
    }
    let _ = c.close().await;
}
