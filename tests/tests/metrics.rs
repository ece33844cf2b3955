//! `/metrics` as Prometheus scrapes it: well-formed text whose gauges say what is open and
//! whose counters move while media flows; behind a bearer token when one is configured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use e2e::synthetic::{PeerOptions, SyntheticPeer};
use e2e::TestServer;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Every sample of a Prometheus text exposition, by series (`name{labels}`), checking the
/// format as it goes: `# HELP`/`# TYPE` comments, else `series value` with a float value.
fn parse(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            ensure!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "an unknown comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("not `series value`: {line}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "a bad metric name in {line}"
        );
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            value => value
                .parse()
                .with_context(|| format!("a bad value in {line}"))?,
        };
        samples.insert(series.to_owned(), value);
    }
    Ok(samples)
}

async fn scrape(server: &TestServer) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = reqwest::get(server.url("/metrics")).await?;
    ensure!(
        response.status().is_success(),
        "/metrics: {}",
        response.status()
    );
    parse(&response.text().await?)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_the_room_and_count_the_media_it_forwards() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let before = scrape(&server).await?;
    let mut peers = Vec::new();
    for name in ["Ann", "Bob"] {
        peers.push(
            SyntheticPeer::join(
                &server.socket_url(),
                "metrics",
                PeerOptions::publishing(name),
            )
            .await?,
        );
    }
    let deadline = Instant::now() + TIMEOUT;
    let (first, second) = loop {
        let samples = scrape(&server).await?;
        // Each peer receives the other's audio and video; give them a moment of flow.
        if sample(&samples, "videoroom_forwarded_packets_total")
            > sample(&before, "videoroom_forwarded_packets_total") + 100.0
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break (samples, scrape(&server).await?);
        }
        if Instant::now() > deadline {
            bail!("no media counted within {TIMEOUT:?}: {samples:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // In-process servers of other tests share the process's counters: this one's room is
    // at least here, and its counters only grow.
    ensure!(sample(&first, "videoroom_peers") >= 2.0, "{first:?}");
    ensure!(sample(&first, "videoroom_rooms") >= 1.0, "{first:?}");
    // Both peer connections are on this server's media workers.
    let on_workers: f64 = first
        .iter()
        .filter(|(series, _)| series.starts_with("videoroom_media_worker_peer_connections{"))
        .map(|(_, value)| value)
        .sum();
    ensure!(on_workers >= 2.0, "{first:?}");
    let busy: f64 = second
        .iter()
        .filter(|(series, _)| series.starts_with("videoroom_media_worker_busy_microseconds_total{"))
        .map(|(_, value)| value)
        .sum();
    ensure!(
        busy > 0.0,
        "the media workers' busy time was not counted: {second:?}"
    );
    for counter in [
        "videoroom_forwarded_packets_total",
        "videoroom_forwarded_bytes_total",
        "videoroom_media_datagrams_received_total",
        "videoroom_media_datagrams_sent_total",
    ] {
        ensure!(
            sample(&second, counter) > sample(&first, counter),
            "{counter} did not move while media flowed"
        );
    }
    ensure!(
        sample(&second, "videoroom_join_seconds_count")
            >= sample(&before, "videoroom_join_seconds_count") + 2.0,
        "the two joins were not timed"
    );
    ensure!(
        sample(&second, "videoroom_keyframe_requests_total")
            > sample(&before, "videoroom_keyframe_requests_total"),
        "a new subscriber's keyframe request was not counted"
    );
    for peer in peers {
        peer.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_metrics_token_guards_stats_and_metrics() -> anyhow::Result<()> {
    let mut config = server::Config::defaults();
    config.metrics_token = Some("s3cret".to_owned());
    let server = TestServer::start_with(config).await?;
    let client = reqwest::Client::new();
    for path in ["/metrics", "/stats"] {
        let bare = client.get(server.url(path)).send().await?;
        ensure!(
            bare.status() == 401,
            "{path} without the token: {}",
            bare.status()
        );
        let wrong = client
            .get(server.url(path))
            .bearer_auth("guess")
            .send()
            .await?;
        ensure!(
            wrong.status() == 401,
            "{path} with a wrong token: {}",
            wrong.status()
        );
        let right = client
            .get(server.url(path))
            .bearer_auth("s3cret")
            .send()
            .await?;
        ensure!(
            right.status().is_success(),
            "{path} with the token: {}",
            right.status()
        );
    }
    Ok(())
}
