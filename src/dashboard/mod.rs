//! The node's web dashboard and metrics, served over HTTP on loopback by
//! default (as Syncthing's GUI and kubo's WebUI are).
//!
//! ```text
//! GET  /                 the page (HTML, script and style embedded in the binary)
//! GET  /api/state        the node as JSON: peers, graph, transfers, files, DHT, events
//! GET  /api/events       the same, pushed once a second (server-sent events)
//! POST /api/get          fetch a file by id or ticket          (token)
//! POST /api/put?name=…   store the request body as a file      (token)
//! GET  /api/download/N   what get N fetched                     (token)
//! GET  /metrics          Prometheus text format
//! ```
//!
//! [`guard`] decides who may do what; [`view`] builds the JSON once a
//! second for every viewer; `actions` runs gets and puts for the page.

mod actions;
pub mod guard;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::node::Node;
use guard::Access;
use view::Sampler;

/// The port a node's dashboard tries first.
pub const DEFAULT_PORT: u16 = 8480;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Address to bind; if its port is taken, a free one on the same IP.
    pub addr: SocketAddr,
    /// The token actions need (`None`: read-only, and loopback only).
    pub token: Option<String>,
    /// Scratch space for files fetched and stored from the page (emptied
    /// at start).
    pub work_dir: PathBuf,
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// A non-loopback address without a token would let anyone on the
    /// network read the node.
    #[error("refusing to serve the dashboard on {0} without a token: use a loopback address")]
    NoToken(SocketAddr),
    /// The address could not be bound.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The scratch directory could not be made.
    #[error("cannot prepare {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A dashboard being served; it stops when its node does.
#[derive(Debug, Clone)]
pub struct Dashboard {
    addr: SocketAddr,
    token: Option<String>,
    /// The port asked for was taken.
    pub moved_from: Option<u16>,
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    node: Node,
    access: Access,
    state: watch::Receiver<String>,
    /// Event streams open now.
    viewers: Arc<AtomicUsize>,
    downloads: PathBuf,
    uploads: PathBuf,
}

/// One open event stream, counted while it lives.
struct Viewer(Arc<AtomicUsize>);

impl Viewer {
    fn new(count: &Arc<AtomicUsize>) -> Viewer {
        count.fetch_add(1, Ordering::Relaxed);
        Viewer(count.clone())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Dashboard {
    /// A fresh random token (26 characters of base32).
    pub fn new_token() -> String {
        let bytes: [u8; 16] = rand::random();
        data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
    }

    /// Binds and starts serving `node`'s dashboard.
    pub async fn start(node: Node, opts: DashboardOptions) -> Result<Dashboard, DashboardError> {
        let loopback = opts.addr.ip().is_loopback();
        if !loopback && opts.token.is_none() {
            return Err(DashboardError::NoToken(opts.addr));
        }
        let (listener, moved_from) = bind(opts.addr).await?;
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind {
                addr: opts.addr,
                source,
            })?;
        let downloads = opts.work_dir.join("downloads");
        let uploads = opts.work_dir.join("uploads");
        for dir in [&downloads, &uploads] {
            let fresh = match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => std::fs::create_dir_all(dir),
            };
            fresh.map_err(|source| DashboardError::WorkDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut sampler = Sampler::new(node.clone());
        let first = serde_json::to_string(&sampler.sample().await).unwrap_or_default();
        let (tx, rx) = watch::channel(first);
        let viewers = Arc::new(AtomicUsize::new(0));
        let app = App {
            node: node.clone(),
            access: Access::new(opts.token.as_deref(), loopback, addr.port()),
            state: rx,
            viewers: viewers.clone(),
            downloads,
            uploads,
        };
        let router = routes(app);
        let stopping = node.net().stopping();
        tokio::spawn(sampler.run(tx, viewers));
        tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(stopping.clone().cancelled_owned());
            // Open event streams end with the sampler; give them a moment.
            let stopped = async {
                stopping.cancelled().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            tokio::select! {
                r = serve => if let Err(e) = r { warn!("dashboard: {e}") },
                _ = stopped => debug!("dashboard stopped"),
            }
        });
        Ok(Dashboard {
            addr,
            token: opts.token,
            moved_from,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, with the token that lets it act.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }
}

/// Binds `addr`, or a free port on the same IP if its port is taken.
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, Option<u16>), DashboardError> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok((l, None)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            let any = SocketAddr::new(addr.ip(), 0);
            let l = tokio::net::TcpListener::bind(any)
                .await
                .map_err(|source| DashboardError::Bind { addr: any, source })?;
            Ok((l, Some(addr.port())))
        }
        Err(source) => Err(DashboardError::Bind { addr, source }),
    }
}

fn routes(app: App) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("assets/index.html")) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", include_str!("assets/app.js")) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css", include_str!("assets/style.css")) }),
        )
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/get", post(actions::start_get))
        .route(
            "/api/put",
            post(actions::put).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/download/{id}", get(actions::download))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), guarded))
        .with_state(app)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Checks access, then sets the headers every answer carries: nothing
/// cached, no framing by other sites, no referrer (a URL may hold the
/// token), and a content policy allowing only this server's own script.
async fn guarded(State(app): State<App>, req: Request, next: Next) -> Response {
    let need = guard::need(req.method(), req.uri().path());
    let mut resp = match app.access.check(req.headers(), req.uri().query(), need) {
        Ok(()) => next.run(req).await,
        Err(r) => (r.status, Json(serde_json::json!({ "error": r.message }))).into_response(),
    };
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn state(State(app): State<App>) -> Response {
    let json = app.state.borrow().clone();
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// The state as it changes, one `state` event a second.
async fn events(State(app): State<App>) -> impl IntoResponse {
    let viewer = Viewer::new(&app.viewers);
    let start = (app.state, viewer, true);
    let stream = futures_util::stream::unfold(start, |(mut rx, viewer, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        let json = rx.borrow_and_update().clone();
        let event = Event::default().event("state").data(json);
        Some((
            Ok::<_, std::convert::Infallible>(event),
            (rx, viewer, false),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(app): State<App>) -> Response {
    let node = app.node.clone();
    match tokio::task::spawn_blocking(move || node.metrics_text()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
