//! A graceful shutdown: SIGTERM to a server process with peers in a room and a socket that only
//! joined a channel. Every peer is told the server is restarting (an `error` media event), each
//! channel gets its `phx_close`, each socket a 1001 close frame, all within 5 s; the process
//! exits 0 and accepts no new connection.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e::phoenix::{decode_media_event, PhoenixClient};
use e2e::process::ServerProcess;
use shared::metadata::peer_metadata;
use shared::server_event::ErrorMessage;
use shared::{Frame, PhoenixEvent, RoomId, ServerEvent};

/// What the issue asks of a shutdown.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(5);

/// The error events and the `phx_close` of `topic` among `frames`.
fn restart_news(frames: &[Frame], topic: &str) -> (Vec<ErrorMessage>, bool) {
    let errors = frames
        .iter()
        .filter(|frame| frame.event == PhoenixEvent::MediaEvent)
        .filter_map(|frame| match decode_media_event(frame) {
            Ok(ServerEvent::Error(error)) => Some(error),
            _ => None,
        })
        .collect();
    let closed = frames
        .iter()
        .any(|frame| frame.event == PhoenixEvent::Close && frame.topic == topic);
    (errors, closed)
}

#[tokio::test]
async fn sigterm_tells_every_peer_closes_every_socket_and_exits_cleanly() -> anyhow::Result<()> {
    let binary = ServerProcess::binary_beside_this_one()?;
    let mut server = ServerProcess::spawn(&binary, &[]).await?;
    let topic = RoomId::new("closing")?.topic();
    let mut peers = Vec::new();
    for name in ["Ann", "Bob"] {
        let mut client = PhoenixClient::connect(&server.socket_url()).await?;
        let channel = client.join(&topic).await?;
        client.join_room(&channel, peer_metadata(name)).await?;
        peers.push(client);
    }
    let mut lurker = PhoenixClient::connect(&server.socket_url()).await?;
    lurker.join(&topic).await?;

    let started = Instant::now();
    let reading = peers.into_iter().map(|mut client| {
        tokio::spawn(async move { client.frames_until_close(SHUTDOWN_WITHIN).await })
    });
    let reading: Vec<_> = reading.collect();
    let status = server.terminate(SHUTDOWN_WITHIN).await?;
    let exited_after = started.elapsed();
    ensure!(status.success(), "the server exited with {status}");

    for (name, read) in ["Ann", "Bob"].into_iter().zip(reading) {
        let (frames, close) = read.await?.with_context(|| format!("{name}'s socket"))?;
        let (errors, channel_closed) = restart_news(&frames, &topic);
        ensure!(
            errors.iter().any(ErrorMessage::is_server_restarting),
            "{name} was not told the server is restarting: {errors:?}"
        );
        ensure!(channel_closed, "{name}'s channel got no phx_close");
        ensure!(u16::from(close.code) == 1001, "{name}'s close: {close:?}");
    }
    let (frames, close) = lurker.frames_until_close(SHUTDOWN_WITHIN).await?;
    let (errors, channel_closed) = restart_news(&frames, &topic);
    ensure!(
        errors.is_empty(),
        "a channel that never joined the room got {errors:?}"
    );
    ensure!(channel_closed, "the lurker's channel got no phx_close");
    ensure!(
        u16::from(close.code) == 1001,
        "the lurker's close: {close:?}"
    );

    ensure!(
        PhoenixClient::connect(&server.socket_url()).await.is_err(),
        "the stopped server still accepts sockets"
    );
    println!(
        "shutdown: 2 peers and 1 channel told and closed, process exited 0 after {exited_after:?}"
    );
    Ok(())
}
