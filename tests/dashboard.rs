//! The dashboard's HTTP side, with real nodes: metrics that count a real
//! transfer, a get driven through the JSON API, and the refusals that keep
//! other web sites and token-less callers from acting.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, get_bytes, post_json, sample};
use common::{put, random_bytes, shutdown, store_network};
use quic_peer::dashboard::{Dashboard, DashboardOptions};

const TOKEN: &str = "test-token-1234";

async fn serve(node: &quic_peer::Node, dir: &std::path::Path) -> String {
    let dashboard = Dashboard::start(
        node.clone(),
        DashboardOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            token: Some(TOKEN.into()),
            work_dir: dir.join("dashboard"),
        },
    )
    .await
    .expect("dashboard starts");
    assert_eq!(
        dashboard.url(),
        format!("http://{}/?token={TOKEN}", dashboard.addr())
    );
    format!("http://{}", dashboard.addr())
}

/// Polls the state until get `n` is no longer running; returns its JSON.
fn wait_transfer(base: &str, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&format!("{base}/api/state"), &[]);
        assert_eq!(status, 200);
        let state: serde_json::Value = serde_json::from_str(&body).expect("state is JSON");
        let t = state["transfers"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["id"] == n).cloned());
        if let Some(t) = t.filter(|t| t["state"] != "running") {
            return t;
        }
        assert!(Instant::now() < deadline, "get {n} did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_get_made_through_the_api() {
    // Five nodes and three copies: the getter holds none, and repair has
    // no reason to give it one during the test.
    let net = store_network(5).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 3 << 20;
    let data = random_bytes(size, 7);
    let src = dir.path().join("metrics.bin");
    std::fs::write(&src, &data).expect("write");
    let report = put(&net[0].node, &src, 3).await;
    let getter = net
        .iter()
        .find(|s| !report.holders.iter().any(|h| h.id == s.node.id()))
        .expect("a node without a copy");
    let base = serve(&getter.node, getter.dir.path()).await;
    let id = report.id.to_string();

    let before = tokio::task::spawn_blocking({
        let base = base.clone();
        move || get(&format!("{base}/metrics"), &[])
    })
    .await
    .expect("scrape");
    assert_eq!(
        before.0, 200,
        "metrics are readable on loopback without the token"
    );
    let in_before = sample(
        &before.1,
        "quic_peer_transport_bytes_total{direction=\"in\"}",
    );
    let chunk_before = sample(&before.1, "quic_peer_chunk_bytes_total{direction=\"in\"}");

    let base2 = base.clone();
    let (t, after, fetched) = tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {TOKEN}");
        let (status, body) = post_json(
            &format!("{base2}/api/get"),
            &format!("{{\"target\": \"{id}\"}}"),
            &[("authorization", &auth)],
        );
        assert_eq!(status, 202, "{body}");
        let n = serde_json::from_str::<serde_json::Value>(&body).expect("json")["transfer"]
            .as_u64()
            .expect("a transfer number");
        let t = wait_transfer(&base2, n);
        let fetched = get_bytes(&format!("{base2}/api/download/{n}?token={TOKEN}"));
        (t, get(&format!("{base2}/metrics"), &[]).1, fetched)
    })
    .await
    .expect("the API calls");
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["total"], size as u64);
    assert_eq!(t["done"], size as u64);
    assert_eq!(fetched.0, 200);
    assert!(
        fetched.1 == data,
        "the download link serves the file as fetched"
    );

    let in_after = sample(&after, "quic_peer_transport_bytes_total{direction=\"in\"}");
    let chunk_in = sample(&after, "quic_peer_chunk_bytes_total{direction=\"in\"}");
    println!(
        "transport bytes in: {in_before} -> {in_after} for a {size}-byte get; chunk bytes in {chunk_in}"
    );
    assert!(
        in_after - in_before >= size as f64,
        "transport bytes grew by the file"
    );
    assert_eq!(
        chunk_in - chunk_before,
        size as f64,
        "verified chunk bytes count the file once"
    );
    assert_eq!(
        sample(&after, "quic_peer_downloads_total{result=\"ok\"}"),
        1.0
    );
    assert!(sample(&after, "quic_peer_dht_lookups_total") >= 1.0);
    assert!(sample(&after, "quic_peer_peers") >= 3.0);
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_need_the_token_and_this_origin() {
    let net = store_network(2).await;
    let base = serve(&net[1].node, net[1].dir.path()).await;
    let checks = tokio::task::spawn_blocking(move || {
        let id = "x".repeat(52);
        let body = format!("{{\"target\": \"{id}\"}}");
        let url = format!("{base}/api/get");
        let bearer = format!("Bearer {TOKEN}");
        let host = base.trim_start_matches("http://").to_string();
        let same_origin = format!("http://{host}");
        vec![
            ("no token", post_json(&url, &body, &[])),
            (
                "wrong token",
                post_json(&url, &body, &[("authorization", "Bearer nope")]),
            ),
            (
                "another site",
                post_json(
                    &url,
                    &body,
                    &[
                        ("authorization", &bearer),
                        ("origin", "http://evil.example"),
                    ],
                ),
            ),
            (
                "a rebound host name",
                get(
                    &format!("{base}/api/state"),
                    &[("host", &host.replace("127.0.0.1", "evil.example"))],
                ),
            ),
            (
                "a download without the token",
                get(&format!("{base}/api/download/1"), &[]),
            ),
            (
                "a bad id with the token",
                post_json(
                    &url,
                    &body,
                    &[("authorization", &bearer), ("origin", &same_origin)],
                ),
            ),
            ("the state", get(&format!("{base}/api/state"), &[])),
        ]
    })
    .await
    .expect("requests");
    for (what, (status, body)) in &checks {
        println!("{what}: {status} {body}");
    }
    let status = |what: &str| checks.iter().find(|c| c.0 == what).map(|c| c.1 .0);
    let body = |what: &str| {
        checks
            .iter()
            .find(|c| c.0 == what)
            .map(|c| c.1 .1.clone())
            .unwrap_or_default()
    };
    assert_eq!(status("no token"), Some(401));
    assert!(body("no token").contains("a token is needed"));
    assert_eq!(status("wrong token"), Some(401));
    assert_eq!(status("another site"), Some(403));
    assert!(body("another site").contains("another web site"));
    assert_eq!(status("a rebound host name"), Some(403));
    assert_eq!(status("a download without the token"), Some(401));
    assert_eq!(status("a bad id with the token"), Some(400));
    assert!(
        body("a bad id with the token").contains("base32"),
        "the id's fault is named"
    );
    assert_eq!(status("the state"), Some(200));
    assert!(
        !body("the state").contains(TOKEN),
        "the state never carries the token"
    );
    shutdown(net).await;
}

/// The real binary: a taken port moves the dashboard to a free one and
/// says so; `--no-http` serves nothing.
#[test]
fn a_node_says_where_its_dashboard_is() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::dir_arg(&dir);
    let http = format!("127.0.0.1:{port}");
    let mut node = common::Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--http",
        &http,
    ]);
    let moved = node.expect_line("[HTTP] port", Duration::from_secs(20));
    assert!(moved.contains(&format!("port {port} is taken")), "{moved}");
    let line = node.expect_line(
        "[HTTP] dashboard at http://127.0.0.1:",
        Duration::from_secs(5),
    );
    let url = line.split("dashboard at ").nth(1).expect("a URL").trim();
    let (base, token) = url.split_once("/?token=").expect("a token in the URL");
    assert!(token.len() >= 20, "a token hard to guess: {token}");
    let (status, page) = get(&format!("{base}/"), &[]);
    assert_eq!(status, 200);
    assert!(
        page.contains("<script src=\"/app.js\">"),
        "the page is served"
    );
    node.expect_line("[HTTP] metrics at", Duration::from_secs(5));

    let dir2 = tempfile::tempdir().expect("tempdir");
    let data2 = common::dir_arg(&dir2);
    let mut quiet =
        common::Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &data2, "--no-http"]);
    quiet.expect_line("[WAITING]", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    quiet.signal("TERM");
    quiet.expect_line("[STOPPED]", Duration::from_secs(10));
    assert!(
        !quiet.seen.iter().any(|l| l.contains("[HTTP]")),
        "--no-http serves nothing: {:?}",
        quiet.seen
    );
    drop(taken);
}
