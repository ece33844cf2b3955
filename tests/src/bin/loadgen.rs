//! `loadgen`: drives a videoroom server with synthetic peers over the real protocol and prints
//! what it forwarded and at what cost. By default it starts the release server binary beside
//! itself on a free port, so the server's CPU and memory can be read from /proc.
//!
//! `cargo build --release -p server -p e2e && target/release/loadgen --scenario all`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use e2e::load::{self, Figures, Load};
use e2e::process::ServerProcess;
use e2e::synthetic::PeerOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// ROOMS rooms of PEERS peers, everyone publishing audio and video.
    Meeting,
    /// One publisher, SUBSCRIBERS receivers.
    Broadcast,
    /// One publisher; receivers added RAMP_STEP at a time until loss > 1 % or p99 > 100 ms.
    Ramp,
    /// All three, one after the other.
    All,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator and benchmark for the videoroom server")]
struct Args {
    #[arg(long, value_enum, default_value = "meeting")]
    scenario: Scenario,
    #[arg(long, default_value_t = 2)]
    rooms: usize,
    #[arg(long, default_value_t = 4)]
    peers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Seconds of measurement per scenario (per step for the ramp).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 5)]
    ramp_step: usize,
    #[arg(long, default_value_t = 100)]
    ramp_max: usize,
    /// A running server's socket URL (ws://host:port/socket/websocket?vsn=2.0.0) instead of
    /// starting one; give --server-pid too for its CPU and memory. Several (comma-separated:
    /// the nodes of a cluster): the peers join through each in turn.
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// The process id of each --server, whose CPU and memory are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// The server binary to start (default: `videoroom` beside this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Also write the figures here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (servers, server_pids, _spawned) = if args.server.is_empty() {
        let spawned = spawn_server(args.server_bin.clone()).await?;
        (
            Servers(vec![spawned.socket_url()]),
            vec![spawned.pid],
            Some(spawned),
        )
    } else {
        (Servers(args.server.clone()), args.server_pid.clone(), None)
    };
    let scenarios = match args.scenario {
        Scenario::All => vec![Scenario::Meeting, Scenario::Broadcast, Scenario::Ramp],
        one => vec![one],
    };
    let window = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for scenario in scenarios {
        let figures = match scenario {
            Scenario::Meeting => {
                vec![meeting(&servers, &server_pids, args.rooms, args.peers, window).await?]
            }
            Scenario::Broadcast => {
                vec![broadcast(&servers, &server_pids, args.subscribers, window).await?]
            }
            Scenario::Ramp => {
                ramp(
                    &servers,
                    &server_pids,
                    args.ramp_step,
                    args.ramp_max,
                    window,
                )
                .await?
            }
            Scenario::All => unreachable!("expanded above"),
        };
        println!("{}", load::table(&figures));
        rows.extend(figures);
    }
    println!("== all figures ==\n{}", load::table(&rows));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn meeting(
    servers: &Servers,
    server_pids: &[u32],
    rooms: usize,
    peers: usize,
    window: Duration,
) -> anyhow::Result<Figures> {
    eprintln!("meeting: {rooms} rooms × {peers} peers, all publishing");
    let mut load = Load::new(server_pids.to_vec());
    let mut room_of = Vec::new();
    for room in 0..rooms {
        for index in 0..peers {
            let name = format!("room{room}-peer{index}");
            load.join(
                servers.nth(room * peers + index),
                &format!("meeting-{room}"),
                load::publisher(&name),
                index > 0,
            )
            .await?;
            room_of.push(room);
        }
    }
    load.wait_until_flowing(&room_of, Duration::from_secs(60))
        .await?;
    let figures = load
        .measure(&format!("meeting {rooms}×{peers}"), window)
        .await;
    load.leave().await;
    Ok(figures)
}

/// One publisher and `subscribers` receivers in one room.
async fn broadcast(
    servers: &Servers,
    server_pids: &[u32],
    subscribers: usize,
    window: Duration,
) -> anyhow::Result<Figures> {
    eprintln!("broadcast: 1 publisher → {subscribers} subscribers");
    let mut load = Load::new(server_pids.to_vec());
    load.join(
        servers.nth(0),
        "broadcast",
        load::publisher("publisher"),
        false,
    )
    .await?;
    load.wait_until_sending(0, Duration::from_secs(30)).await?;
    for index in 0..subscribers {
        load.join(
            servers.nth(index + 1),
            "broadcast",
            PeerOptions::receive_only(&format!("viewer{index}")),
            true,
        )
        .await?;
    }
    load.wait_until_flowing(&vec![0; subscribers + 1], Duration::from_secs(60))
        .await?;
    let figures = load
        .measure(&format!("broadcast 1→{subscribers}"), window)
        .await;
    load.leave().await;
    Ok(figures)
}

/// Adds receivers `step` at a time until loss passes 1 % or p99 latency 100 ms, or `max`.
async fn ramp(
    servers: &Servers,
    server_pids: &[u32],
    step: usize,
    max: usize,
    window: Duration,
) -> anyhow::Result<Vec<Figures>> {
    eprintln!("ramp: 1 publisher, +{step} subscribers per step up to {max}");
    let mut load = Load::new(server_pids.to_vec());
    load.join(servers.nth(0), "ramp", load::publisher("publisher"), false)
        .await?;
    load.wait_until_sending(0, Duration::from_secs(30)).await?;
    let mut rows = Vec::new();
    let mut subscribers = 0;
    while subscribers < max {
        for _ in 0..step.min(max - subscribers) {
            subscribers += 1;
            load.join(
                servers.nth(subscribers),
                "ramp",
                PeerOptions::receive_only(&format!("viewer{subscribers}")),
                true,
            )
            .await?;
        }
        load.wait_until_flowing(&vec![0; subscribers + 1], Duration::from_secs(60))
            .await?;
        let figures = load.measure(&format!("ramp 1→{subscribers}"), window).await;
        let broke = figures.loss_percent > 1.0 || figures.latency_p99_us > 100_000;
        rows.push(figures);
        if broke {
            eprintln!("ramp: broke at {subscribers} subscribers (loss > 1 % or p99 > 100 ms)");
            break;
        }
    }
    if rows
        .last()
        .is_some_and(|row| row.loss_percent <= 1.0 && row.latency_p99_us <= 100_000)
    {
        eprintln!("ramp: held up to {subscribers} subscribers");
    }
    load.leave().await;
    Ok(rows)
}

/// The socket URLs peers join through, in turn.
struct Servers(Vec<String>);

impl Servers {
    fn nth(&self, peer: usize) -> &str {
        &self.0[peer % self.0.len()]
    }
}

async fn spawn_server(binary: Option<PathBuf>) -> anyhow::Result<ServerProcess> {
    let binary = match binary {
        Some(binary) => binary,
        None => ServerProcess::binary_beside_this_one()?,
    };
    // Every synthetic peer comes from loopback, and rooms get as big as the run asks.
    let server = ServerProcess::spawn(
        &binary,
        &[
            "--max-peers-per-room",
            "1000",
            "--max-tracks-per-peer",
            "2",
            "--max-mlines-per-offer",
            "2000",
            "--max-outbox-bytes",
            "16777216",
            "--max-sockets-per-ip",
            "100000",
            "--max-connections-per-ip",
            "100000",
        ],
    )
    .await?;
    eprintln!(
        "started {} (pid {}) on port {}",
        binary.display(),
        server.pid,
        server.port
    );
    Ok(server)
}
