//! The TCP side of HTTP: accepts connections up to the caps (in all, and per client address),
//! gives each request `--header-timeout` to arrive, and serves it with hyper, WebSocket upgrades
//! included. A connection over a cap gets a short `503` and is closed. Each connection carries
//! its place under the caps for as long as it lives, upgraded sockets included.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use tokio_rustls::TlsAcceptor;

use crate::limits::{AddressGuard, AddressQuota, LimitExceeded, Limits, Quota, QuotaGuard};

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let all = Quota::new(limits.max_connections);
    let per_address = AddressQuota::new(limits.max_connections_per_ip);
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait for some to be given back.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        match admit(&all, &per_address, client) {
            Ok(admitted) => {
                let io = Admitted {
                    stream,
                    _guards: admitted,
                };
                let header_timeout = limits.header_timeout;
                let (app, stopping, tls) = (app.clone(), stopping.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(io, client, app, header_timeout, stopping).await,
                        Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(io))
                            .await
                        {
                            Ok(Ok(io)) => {
                                serve_connection(io, client, app, header_timeout, stopping).await
                            }
                            Ok(Err(err)) => tracing::debug!(%client, %err, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                        },
                    }
                });
            }
            Err(refused) => {
                tracing::warn!(%client, %refused, "connection refused");
                refuse(&stream, &refused);
            }
        }
    }
    let _ = stop.send(true);
    // Every connection task holds a receiver: wait until they have all finished.
    drop(stopping);
    stop.closed().await;
}

/// A connection's places under the caps.
type Guards = (QuotaGuard, AddressGuard);

fn admit(
    all: &Arc<Quota>,
    per_address: &Arc<AddressQuota>,
    client: SocketAddr,
) -> Result<Guards, LimitExceeded> {
    let total = all.try_take().ok_or_else(|| {
        LimitExceeded::new(
            "another connection".to_owned(),
            all.max(),
            "connections",
            "max-connections",
        )
    })?;
    let own = per_address.try_take(client.ip()).ok_or_else(|| {
        LimitExceeded::new(
            format!("another connection from {}", client.ip()),
            per_address.max(),
            "connections",
            "max-connections-per-ip",
        )
    })?;
    Ok((total, own))
}

/// Answers a connection over a cap with a `503` naming the limit, if the socket takes it at
/// once, and closes it.
fn refuse(stream: &TcpStream, refused: &LimitExceeded) {
    let body = format!("{refused}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 10\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

async fn serve_connection<I>(
    io: I,
    client: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(client));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%client, %err, "connection ended");
            }
            return;
        }
        _ = stopping.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
    }
    if let Err(err) = connection.await {
        tracing::debug!(%client, %err, "connection ended");
    }
}

/// An accepted TCP stream with its places under the caps, given back when it closes.
struct Admitted {
    stream: TcpStream,
    _guards: Guards,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
