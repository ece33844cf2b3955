//! The web client the server hands browsers: the `dist/` that `scripts/build-client.sh` (or
//! trunk) wrote, built into the binary (so the release binary alone serves the room), or read
//! from `--static-dir` for development. Every page of the client is `index.html` (its router
//! picks the view), fetched anew each time; the assets it names carry a content hash and never
//! change.

use std::borrow::Cow;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

/// `dist/` as it was when the server was compiled (read from disk at run time in debug builds).
#[derive(RustEmbed)]
#[folder = "../dist"]
#[allow_missing = true]
struct Built;

const PAGE_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const ASSET_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// The client's pages and assets, from `static_dir` or else from the binary.
pub fn routes(static_dir: Option<&Path>) -> Router {
    match static_dir {
        Some(dir) => from_dir(dir),
        None => built_in(),
    }
}

fn from_dir(dir: &Path) -> Router {
    let index = dir.join("index.html");
    if !index.is_file() {
        tracing::warn!(
            "{} is missing: build the client first (see README), the pages will answer 404",
            index.display()
        );
    }
    let pages = Router::new()
        .route_service("/", ServeFile::new(&index))
        .route_service("/room/{room}", ServeFile::new(&index))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            PAGE_CACHE,
        ));
    let assets = Router::new().fallback_service(ServeDir::new(dir)).layer(
        SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, ASSET_CACHE),
    );
    pages.merge(assets)
}

fn built_in() -> Router {
    if Built::get("index.html").is_none() {
        tracing::warn!(
            "this server was built without the web client (run scripts/run.sh, which builds it \
             first, or pass --static-dir): the pages will answer 404"
        );
    }
    Router::new()
        .route("/", get(page))
        .route("/room/{room}", get(page))
        .fallback(get(asset))
}

async fn page() -> Response {
    built_file("index.html", PAGE_CACHE)
}

async fn asset(uri: Uri) -> Response {
    built_file(uri.path().trim_start_matches('/'), ASSET_CACHE)
}

fn built_file(path: &str, cache: HeaderValue) -> Response {
    let Some(file) = Built::get(path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let content_type = HeaderValue::from_str(mime.as_ref())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // Built into a release binary, the bytes are static: served without a copy.
    let body = match file.data {
        Cow::Borrowed(bytes) => Body::from(bytes),
        Cow::Owned(bytes) => Body::from(bytes),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}
