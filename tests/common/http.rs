//! A small HTTP client for the dashboard tests: statuses are answers, not
//! errors, so refusals can be asserted.

use std::time::Duration;

/// An agent that returns 4xx and 5xx answers instead of failing.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET url` with extra headers: the status and the body as text.
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, body) = get_with(url, headers);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET url`: the status and the raw body.
pub fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    get_with(url, &[])
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().expect("the request is answered");
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .expect("a body");
    (status, body)
}

/// `POST url` with a JSON body and extra headers: the status and the body.
pub fn post_json(url: &str, json: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(json).expect("the request is answered");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().expect("a body");
    (status, body)
}

/// The value of the sample `name` (with its labels, as written) in a
/// Prometheus text page; 0 if absent.
pub fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
