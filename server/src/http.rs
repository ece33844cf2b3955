//! HTTP routes: the single-page client (its pages and its assets), `/health`, `/stats`, and the
//! Phoenix socket's WebSocket upgrade at `/socket/websocket`.

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use shared::MAX_MESSAGE_LEN;
use tower_http::compression::CompressionLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::registry::{Counts, Registry};
use crate::{socket, Config};

pub fn router(config: &Config, rooms: Registry) -> Router {
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
    let api = Router::new()
        .route("/socket/websocket", get(upgrade))
        .route("/stats", get(stats))
        .with_state(rooms);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(api)
        .merge(page)
        .merge(assets)
        .layer(CompressionLayer::new())
}

/// `GET /socket/websocket?vsn=2.0.0`: the Phoenix V2 socket.
async fn upgrade(ws: WebSocketUpgrade, State(rooms): State<Registry>) -> Response {
    // Messages over our limit but within twice it still reach the socket, which answers them
    // with a clear error; beyond that the WebSocket layer closes the connection.
    ws.max_message_size(2 * MAX_MESSAGE_LEN)
        .on_upgrade(move |ws| socket::serve(ws, rooms))
}

async fn stats(State(rooms): State<Registry>) -> Json<Counts> {
    Json(rooms.counts().await)
}
