//! HTTP routes: the single-page client (its pages and its assets), `/health`, `/stats`,
//! `/metrics`, and the Phoenix socket's WebSocket upgrade at `/socket/websocket`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::CompressionLevel;

use crate::cluster::ClusterView;
use crate::forwarded;
use crate::origin;
use crate::signaling::registry::{Counts, Registry};
use crate::signaling::relay::{RELAY_CLIENT_HEADER, RELAY_SECRET_HEADER};
use crate::signaling::socket;
use crate::telemetry;
use crate::web_client;
use crate::Config;

pub fn router(config: &Config, rooms: Registry) -> Router {
    let admission = Arc::new(Admission {
        allowed_origins: config.allowed_origins.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
    });
    let token: Option<Arc<str>> = config.metrics_token.as_deref().map(Arc::from);
    let bearer = middleware::from_fn(move |request: Request, next: Next| {
        let token = token.clone();
        async move { require_bearer(token.as_deref(), request, next).await }
    });
    let api = Router::new()
        .route(
            "/socket/websocket",
            get(move |ws, client, headers, params, rooms| {
                upgrade(ws, client, headers, params, rooms, admission.clone())
            }),
        )
        .route("/stats", get(stats).layer(bearer.clone()))
        .route("/metrics", get(metrics).layer(bearer))
        .with_state(rooms);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(api)
        .merge(web_client::routes(config.static_dir.as_deref()))
        // Brotli 9 (gzip 9): the client's WebAssembly goes out in 230 KB instead of 249 KB at
        // the default level, for about 45 ms of one core per download (10 and 11 save 16–23 KB
        // more for 1.2–2.5 s).
        .layer(CompressionLayer::new().quality(CompressionLevel::Precise(9)))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Who may open the signaling socket, and who is asking.
struct Admission {
    allowed_origins: Vec<String>,
    trusted_proxies: Vec<IpAddr>,
}

/// The socket's parameters beside `vsn`, as Phoenix's `params` put them in the URL.
#[derive(Debug, Deserialize)]
struct SocketParams {
    /// A join token, when the server has access control on.
    token: Option<String>,
}

/// `GET /socket/websocket?vsn=2.0.0`: the Phoenix V2 socket. A page of a foreign origin gets a
/// `403` naming it; a client address with all the sockets it may have gets its socket closed at
/// once, with the reason.
async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<SocketParams>,
    State(rooms): State<Registry>,
    admission: Arc<Admission>,
) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    // Another node of the cluster relaying its client says who that client is.
    let relayed = rooms
        .settings()
        .cluster
        .as_ref()
        .filter(|cluster| {
            header(HeaderName::from_static(RELAY_SECRET_HEADER))
                .is_some_and(|shown| same_secret(shown, cluster.secret()))
        })
        .and_then(|_| {
            header(HeaderName::from_static(RELAY_CLIENT_HEADER))?
                .parse::<SocketAddr>()
                .ok()
        });
    let client = relayed.unwrap_or_else(|| {
        forwarded::client_address(peer, header(X_FORWARDED_FOR), &admission.trusted_proxies)
    });
    if let Err(refused) = origin::check(
        header(header::ORIGIN),
        header(header::HOST),
        &admission.allowed_origins,
    ) {
        tracing::warn!(%client, %refused, "socket refused");
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    // Messages over our limit but within twice it still reach the socket, which answers them
    // with a clear error; beyond that the WebSocket layer refuses them and the socket closes.
    let max_frame = rooms.limits().max_frame_bytes;
    let ws = ws
        .max_message_size(2 * max_frame)
        .max_frame_size(2 * max_frame);
    let quota = rooms.sockets_per_address().clone();
    match quota.try_take(client.ip()) {
        Some(admitted) => {
            ws.on_upgrade(move |ws| socket::serve(ws, rooms, client, admitted, params.token))
        }
        None => ws.on_upgrade(move |ws| socket::refuse(ws, client, quota.max())),
    }
}

/// What `/stats` says: this node's counts, and in a cluster every node and room.
#[derive(Serialize)]
struct Stats {
    #[serde(flatten)]
    counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
}

async fn stats(State(rooms): State<Registry>) -> Response {
    let cluster = match &rooms.settings().cluster {
        None => None,
        Some(cluster) => match cluster.view().await {
            Ok(view) => Some(view),
            Err(err) => {
                let reason = format!("the cluster's state is unavailable: {err}\n");
                return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
            }
        },
    };
    Json(Stats {
        counts: rooms.counts(),
        cluster,
    })
    .into_response()
}

/// Lets a request through if no token is configured, or if it carries `Bearer TOKEN`.
async fn require_bearer(token: Option<&str>, request: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|presented| same_secret(presented, token)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this needs `Authorization: Bearer TOKEN` with the server's --metrics-token\n",
    )
        .into_response()
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
fn same_secret(presented: &str, token: &str) -> bool {
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(rooms): State<Registry>) -> Response {
    if let Some(cluster) = &rooms.settings().cluster {
        match cluster.view().await {
            Ok(view) => telemetry::cluster(&view),
            Err(err) => tracing::warn!(%err, "metrics without the cluster's view"),
        }
    }
    let text = telemetry::render(rooms.counts(), &rooms.worker_loads());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
