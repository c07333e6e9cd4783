//! What the page may do with the token: fetch a file into the dashboard's
//! scratch space and hand it to the browser, or store a file the browser
//! sends.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::App;
use crate::download::{DownloadOptions, NoProgress};
use crate::observe::TaskState;
use crate::proto::sealed::FileKey;
use crate::proto::ticket::Target;
use crate::replication::{PutError, PutOptions, Sealing};

/// Most copies a put from the page may ask for.
const MAX_REPLICAS: usize = 20;

/// An error the page shows: `{"error": "…"}` with a status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.to_string())
}

fn failed(message: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
}

/// `POST /api/get`.
#[derive(Deserialize)]
pub struct GetRequest {
    /// A file id or a ticket.
    target: String,
    /// The key of an encrypted file named by id.
    #[serde(default)]
    key: Option<String>,
}

/// Starts a get; its progress shows in the state's transfers, and once done
/// its file is at `/api/download/N`.
pub async fn start_get(
    State(app): State<App>,
    Json(req): Json<GetRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let target: Target = req.target.parse().map_err(bad)?;
    let key = match req.key.as_deref().map(str::trim) {
        Some(k) if !k.is_empty() => Some(k.parse::<FileKey>().map_err(bad)?),
        _ => None,
    };
    let target = target.with_key(key).map_err(bad)?;
    prune_downloads(&app).await;
    let task = app.node.net().observe().activity.start("get");
    let out = app.downloads.join(task.id.to_string());
    let id = task.id;
    let node = app.node.clone();
    tokio::spawn(async move {
        let opts = DownloadOptions {
            // The scratch space is the dashboard's own.
            force: true,
            ..DownloadOptions::default()
        };
        // The outcome is kept in the task, which the page shows.
        let _ = node
            .get_tracked(task, &target, &out, &opts, Arc::new(NoProgress))
            .await;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "transfer": id })),
    ))
}

/// `POST /api/put` query.
#[derive(Deserialize)]
pub struct PutQuery {
    /// The file's name.
    name: String,
    /// Copies on other nodes.
    #[serde(default)]
    replicas: Option<usize>,
    /// Store it unencrypted.
    #[serde(default)]
    public: bool,
}

/// Stores the request body as a file named `name` and answers its id and
/// ticket once the copies are placed.
pub async fn put(
    State(app): State<App>,
    Query(q): Query<PutQuery>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let name = file_name(&q.name)?;
    let replicas = q.replicas.unwrap_or(PutOptions::default().replicas);
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(bad(format!("copies must be between 1 and {MAX_REPLICAS}")));
    }
    let dir = app.uploads.join(format!("{:016x}", rand::random::<u64>()));
    // Its own task: a browser that goes away does not leave the upload
    // behind or the put half done.
    let work = tokio::spawn(async move {
        let result = receive_and_put(&app, &dir, &name, replicas, q.public, body).await;
        // The store keeps its own copy: the upload goes either way.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    });
    work.await.map_err(failed)?
}

/// Removes what gets no longer listed fetched (the page keeps the last
/// few), so the scratch space does not grow with every get.
async fn prune_downloads(app: &App) {
    let Ok(mut dir) = tokio::fs::read_dir(&app.downloads).await else {
        return;
    };
    let activity = &app.node.net().observe().activity;
    while let Ok(Some(entry)) = dir.next_entry().await {
        let listed = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| activity.task(n).is_some());
        if !listed {
            let path = entry.path();
            let removed = match entry.file_type().await {
                Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(&path).await,
                _ => tokio::fs::remove_file(&path).await,
            };
            if let Err(e) = removed {
                tracing::debug!("dashboard: cannot remove {}: {e}", path.display());
            }
        }
    }
}

async fn receive_and_put(
    app: &App,
    dir: &FsPath,
    name: &str,
    replicas: usize,
    public: bool,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    let path = dir.join(name);
    let mut file = tokio::fs::File::create(&path).await.map_err(failed)?;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| bad(format!("the upload broke off: {e}")))?;
        file.write_all(&piece).await.map_err(failed)?;
    }
    file.flush().await.map_err(failed)?;
    drop(file);
    let opts = PutOptions {
        replicas,
        sealing: if public {
            Sealing::Public
        } else {
            Sealing::Random
        },
        ..PutOptions::default()
    };
    let report = app
        .node
        .put(&path, &opts, Arc::new(NoProgress))
        .await
        .map_err(|e| match e {
            PutError::NoCopies { .. } | PutError::Stopped => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            PutError::Chunk(_) | PutError::Import(_) => failed(e),
        })?;
    Ok(Json(serde_json::json!({
        "id": report.id.to_string(),
        "ticket": report.ticket.to_string(),
        "copies": report.remote_copies,
        "wanted": report.wanted,
    })))
}

/// A name from the browser, as one path component.
fn file_name(name: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if ok {
        Ok(name.to_string())
    } else {
        Err(bad(format!("{name:?} is not a usable file name")))
    }
}

/// `GET /api/download/N`: the file get N wrote.
pub async fn download(State(app): State<App>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let not_here = || ApiError(StatusCode::NOT_FOUND, format!("no finished download {id}"));
    let task = app
        .node
        .net()
        .observe()
        .activity
        .task(id)
        .ok_or_else(not_here)?;
    let path: PathBuf = match task.state().0 {
        TaskState::Done { file: Some(path) } if path.starts_with(&app.downloads) => path,
        _ => return Err(not_here()),
    };
    let file = tokio::fs::File::open(&path).await.map_err(|_| not_here())?;
    let len = file.metadata().await.map_err(failed)?.len();
    let name: String = task
        .name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() {
        format!("download-{id}")
    } else {
        name
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
