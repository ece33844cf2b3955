//! HTTP routes: the single-page client (its pages and its assets) and `/health`.

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::Config;

pub fn router(config: &Config) -> Router {
    let index = config.static_dir.join("index.html");
    if !index.is_file() {
        tracing::warn!(
            "{} is missing: build the client first (see README), the pages will answer 404",
            index.display()
        );
    }
    // Every page of the client is `index.html` (its router picks the view). The page must be
    // fetched anew each time; the assets it names carry a content hash and never change.
    let page = Router::new()
        .route_service("/", ServeFile::new(&index))
        .route_service("/room/{room}", ServeFile::new(&index))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ));
    let assets = Router::new()
        .fallback_service(ServeDir::new(&config.static_dir))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(page)
        .merge(assets)
        .layer(CompressionLayer::new())
}
