//! `floor`: the machine's floor for forwarding, beside which the benchmark's server figures are read:
//! the CPU one core spends sending the benchmark's packets (1,250-byte payloads plus RTP and
//! SRTP overhead) with the media worker's own batched send (`server::media::udp`: `sendmmsg`),
//! to as many loopback receivers as a broadcast has subscribers, one batch per incoming packet's
//! fan-out. A thread on the other core reads them. No WebRTC and no forwarding logic: what a
//! forwarded packet would cost if those cost nothing.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use clap::Parser;
use server::media::udp::MediaSocket;

#[derive(Debug, Parser)]
#[command(
    about = "The send floor: batched loopback sends of forwarded-size packets, CPU per packet"
)]
struct Args {
    /// Receivers, as subscribers of one publisher.
    #[arg(long, default_value_t = 25)]
    receivers: usize,
    /// Bytes per datagram: the generator's 1,250-byte payload, RTP header, SRTP tag.
    #[arg(long, default_value_t = 1_250 + 12 + 16)]
    size: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The core the sender runs on; the reader takes the other one.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Datagrams to each receiver per flush, as a loop turn that read that many packets of a
    /// publisher (a video frame's) forwards them.
    #[arg(long, default_value_t = 1)]
    per_turn: usize,
    /// Each datagram a message of its own, no UDP GSO.
    #[arg(long)]
    no_gso: bool,
}

fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// This thread's user+system CPU time.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receivers: Vec<UdpSocket> = (0..args.receivers)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addresses: Vec<_> = receivers
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, received) = (stop.clone(), received.clone());
        let core = (args.core + 1) % 2;
        std::thread::spawn(move || {
            pin_to(core);
            let mut buffer = vec![0; 2048];
            for socket in &receivers {
                let _ = socket.set_nonblocking(true);
            }
            while !stop.load(Ordering::Relaxed) {
                for socket in &receivers {
                    while socket.recv(&mut buffer).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    pin_to(args.core);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (sent, dropped, messages, cpu, wall) = runtime.block_on(async {
        let socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0")?)?;
        let mut socket = if args.no_gso {
            socket.without_gso()
        } else {
            socket
        };
        let payload = vec![0x5a; args.size];
        let (mut sent, mut dropped, mut messages) = (0, 0, 0);
        let (cpu_start, start) = (thread_cpu(), Instant::now());
        let end = start + Duration::from_secs(args.seconds);
        while Instant::now() < end {
            for _ in 0..100 {
                // As the worker does: each datagram its own buffer, one flush per fan-out.
                for address in &addresses {
                    for _ in 0..args.per_turn {
                        socket.queue(*address, BytesMut::from(&payload[..]));
                    }
                }
                let flushed = socket.flush();
                sent += flushed.datagrams;
                dropped += flushed.dropped;
                messages += flushed.messages;
            }
        }
        anyhow::Ok((
            sent,
            dropped,
            messages,
            thread_cpu() - cpu_start,
            start.elapsed(),
        ))
    })?;
    stop.store(true, Ordering::Relaxed);
    reader.join().ok().context("the reader thread")?;
    let per_packet = cpu.as_secs_f64() * 1e6 / sent.max(1) as f64;
    println!(
        "floor: {sent} datagrams of {} bytes to {} receivers, {} a turn each, in {messages} messages ({}) in {wall:.1?} ({:.0}/s), {dropped} dropped, {} read; sender CPU {cpu:.2?} = {per_packet:.2} µs per datagram",
        args.size,
        args.receivers,
        args.per_turn,
        if args.no_gso { "no GSO" } else { "GSO where a run allows" },
        sent as f64 / wall.as_secs_f64(),
        received.load(Ordering::Relaxed),
    );
    Ok(())
}
