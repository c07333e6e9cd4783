//! Who may use the dashboard, checked before any handler runs.
//!
//! - The page itself (HTML, script, style) is served to anyone who can
//!   reach the port.
//! - Reading (`/api/state`, `/api/events`, `/metrics`) is open on a
//!   loopback address; on any other address it needs the token.
//! - Acting (`/api/get`, `/api/put`, `/api/download/…`) always needs the
//!   token, given as `Authorization: Bearer TOKEN` or `?token=TOKEN`.
//! - On a loopback address the `Host` header must name loopback, so a web
//!   site whose name resolves to 127.0.0.1 (DNS rebinding) is refused; an
//!   `Origin` header must be this server's own, so another site's page cannot
//!   drive it from the user's browser.

use axum::http::{header, HeaderMap, Method, StatusCode};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The page's own files.
    Nothing,
    /// The node's state and metrics.
    Read,
    /// Fetching, storing, downloading.
    Act,
}

/// What a path needs.
pub fn need(method: &Method, path: &str) -> Need {
    match path {
        "/" | "/app.js" | "/style.css" => Need::Nothing,
        "/api/get" | "/api/put" => Need::Act,
        p if p.starts_with("/api/download/") => Need::Act,
        _ if method != Method::GET && method != Method::HEAD => Need::Act,
        _ => Need::Read,
    }
}

/// Why a request was refused, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 without a valid token, 403 for a foreign host or origin.
    pub status: StatusCode,
    /// One line for a person.
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The rules of one dashboard.
#[derive(Clone)]
pub struct Access {
    token: Option<blake3::Hash>,
    loopback: bool,
    port: u16,
}

impl Access {
    /// Rules for a server on a loopback address or not, at `port`, taking
    /// `token` for actions (`None`: read-only).
    pub fn new(token: Option<&str>, loopback: bool, port: u16) -> Access {
        Access {
            token: token.map(|t| blake3::hash(t.as_bytes())),
            loopback,
            port,
        }
    }

    /// Whether a request with these headers and query may do what it needs.
    pub fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        need: Need,
    ) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no Host header"))?;
        if self.loopback && !self.is_loopback_host(host) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("this dashboard answers only to a loopback host name, not {host:?}"),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}")));
            if !same {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "requests from another web site are refused",
                ));
            }
        }
        let open = need == Need::Nothing || (need == Need::Read && self.loopback);
        if open {
            return Ok(());
        }
        let Some(expected) = &self.token else {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "this dashboard is read-only: its node was started without a token",
            ));
        };
        match given_token(headers, query) {
            // blake3::Hash compares in constant time.
            Some(t) if blake3::hash(t.as_bytes()) == *expected => Ok(()),
            Some(_) => Err(refuse(StatusCode::UNAUTHORIZED, "the token is wrong")),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "a token is needed: open the link the node printed at start (…/?token=…)",
            )),
        }
    }

    fn is_loopback_host(&self, host: &str) -> bool {
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if port.parse() != Ok(self.port) {
            return false;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// The token from `Authorization: Bearer …` or `?token=…`.
fn given_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    bearer.or_else(|| query?.split('&').find_map(|kv| kv.strip_prefix("token=")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn loopback_reads_freely_and_acts_with_the_token() {
        let a = Access::new(Some("secret"), true, 8480);
        let plain = headers(&[(header::HOST, "127.0.0.1:8480")]);
        assert!(a.check(&plain, None, Need::Read).is_ok());
        assert_eq!(
            a.check(&plain, None, Need::Act).map_err(|r| r.status),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert!(a.check(&plain, Some("x=1&token=secret"), Need::Act).is_ok());
        let bearer = headers(&[
            (header::HOST, "localhost:8480"),
            (header::AUTHORIZATION, "Bearer secret"),
        ]);
        assert!(a.check(&bearer, None, Need::Act).is_ok());
        let wrong = headers(&[
            (header::HOST, "[::1]:8480"),
            (header::AUTHORIZATION, "Bearer secreT"),
        ]);
        assert_eq!(
            a.check(&wrong, None, Need::Act).map_err(|r| r.status),
            Err(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused_even_with_the_token() {
        let a = Access::new(Some("secret"), true, 8480);
        let rebound = headers(&[(header::HOST, "evil.example:8480")]);
        assert_eq!(
            a.check(&rebound, Some("token=secret"), Need::Nothing)
                .map_err(|r| r.status),
            Err(StatusCode::FORBIDDEN)
        );
        let other_port = headers(&[(header::HOST, "127.0.0.1:9999")]);
        assert!(a.check(&other_port, None, Need::Read).is_err());
        let cross = headers(&[
            (header::HOST, "127.0.0.1:8480"),
            (header::ORIGIN, "http://evil.example"),
        ]);
        assert_eq!(
            a.check(&cross, Some("token=secret"), Need::Act)
                .map_err(|r| r.status),
            Err(StatusCode::FORBIDDEN)
        );
        let same = headers(&[
            (header::HOST, "127.0.0.1:8480"),
            (header::ORIGIN, "http://127.0.0.1:8480"),
        ]);
        assert!(a.check(&same, Some("token=secret"), Need::Act).is_ok());
    }

    #[test]
    fn off_loopback_everything_but_the_page_needs_the_token() {
        let a = Access::new(Some("secret"), false, 8480);
        let h = headers(&[(header::HOST, "node.example:8480")]);
        assert!(a.check(&h, None, Need::Nothing).is_ok());
        assert!(a.check(&h, None, Need::Read).is_err());
        assert!(a.check(&h, Some("token=secret"), Need::Read).is_ok());
        let read_only = Access::new(None, true, 8480);
        let h = headers(&[(header::HOST, "127.0.0.1:8480")]);
        assert_eq!(
            read_only
                .check(&h, Some("token=x"), Need::Act)
                .map_err(|r| r.status),
            Err(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn paths_need_what_they_do() {
        assert_eq!(need(&Method::GET, "/"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/api/events"), Need::Read);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Read);
        assert_eq!(need(&Method::POST, "/api/get"), Need::Act);
        assert_eq!(need(&Method::GET, "/api/download/3"), Need::Act);
        assert_eq!(need(&Method::POST, "/api/state"), Need::Act);
    }
}
