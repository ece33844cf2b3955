//! A smoke run of the benchmark's load: a few synthetic peers for a few seconds through the
//! real server, checking that media flowed and the figures are computed from it.

use std::time::Duration;

use e2e::load::{self, Load};
use e2e::TestServer;

#[tokio::test]
async fn a_small_meeting_forwards_media_and_reports_figures() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // The server runs in this process, so its CPU cannot be told from the peers': not measured.
    let mut load = Load::new(Vec::new());
    for index in 0..3 {
        load.join(
            &server.socket_url(),
            "smoke",
            load::publisher(&format!("peer{index}")),
            index > 0,
        )
        .await?;
    }
    load.wait_until_flowing(&[0, 0, 0], Duration::from_secs(20))
        .await?;
    let figures = load.measure("smoke 1×3", Duration::from_secs(2)).await;
    println!("{}", load::table(std::slice::from_ref(&figures)));
    // Three publishers of audio and video, each track to two others: 12 forwarded streams.
    assert_eq!(
        (figures.peers, figures.publishers, figures.forwarded_streams),
        (3, 3, 12)
    );
    // Each publisher sends 50 audio and 150 video packets a second, to two subscribers.
    let expected = 3.0 * 2.0 * 200.0;
    assert!(
        figures.forwarded_packets_per_second > expected * 0.7,
        "only {:.0} packets/s forwarded, {expected} expected",
        figures.forwarded_packets_per_second
    );
    assert_eq!(figures.corrupt_packets, 0);
    assert!(figures.latency_p50_us > 0 && figures.latency_p50_us <= figures.latency_p99_us);
    assert!(
        figures.join_to_media_p50_ms.is_some(),
        "join time not measured"
    );
    assert!(load.packets_sent() > 0);
    load.leave().await;
    Ok(())
}
