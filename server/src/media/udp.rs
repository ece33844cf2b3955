//! A media worker's UDP socket, shared by every peer connection on the worker: datagrams come
//! in by the batch (`recvmmsg`, with GRO where the kernel has it, through `quinn-udp`) and
//! everything one loop turn produced goes out in as few system calls as possible: one
//! `sendmmsg` for up to [`SEND_BATCH`] messages, each message a run of datagrams to one
//! destination sent as one UDP GSO super-datagram where the kernel has it (a subscriber's
//! packets of one turn, typically the several packets of a video frame). Where GSO fails it is
//! turned off and each datagram is a message of its own.
//! Sending never waits: a datagram the kernel will not take now is dropped and counted, so one
//! subscriber that cannot keep up never holds up the others.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::SockAddr;
use tokio::io::Interest;

/// Datagrams read per system call.
const RECEIVE_BATCH: usize = 32;
/// Room for a GRO-coalesced run of datagrams in one slot.
const SLOT_SIZE: usize = 64 * 1024;
/// Messages written per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Datagrams written per `sendmmsg` call, across its messages.
const SEND_DATAGRAMS: usize = 256;
/// A GSO message's payload stays within one IP datagram's limit.
const GSO_MAX_BYTES: usize = 64_000;
/// Socket buffers big enough to ride out a loop turn's burst to hundreds of subscribers (the
/// kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// What happened to the datagrams of one flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    /// Refused by the kernel now (a full buffer) or for good (an unreachable address).
    pub dropped: u64,
    /// Messages (system-call entries) the datagrams went out in.
    pub messages: u64,
}

/// A datagram waiting to be sent.
struct Outgoing {
    to: SocketAddr,
    address: SockAddr,
    datagram: BytesMut,
}

pub struct MediaSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// Datagrams one GSO message may carry; 1 without GSO.
    gso_segments: usize,
    slots: Vec<u8>,
    meta: Vec<RecvMeta>,
    outgoing: Vec<Outgoing>,
}

impl MediaSocket {
    /// Wraps a bound socket; must run inside the worker's runtime.
    pub fn new(socket: UdpSocket) -> io::Result<MediaSocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: a smaller buffer only means drops sooner under a burst.
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        Ok(MediaSocket {
            gso_segments: state.max_gso_segments().max(1),
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
            slots: vec![0; RECEIVE_BATCH * SLOT_SIZE],
            meta: vec![RecvMeta::default(); RECEIVE_BATCH],
            outgoing: Vec::with_capacity(SEND_DATAGRAMS),
        })
    }

    /// Sends each datagram on its own from now on (the benchmark's comparison, and what a
    /// failed GSO send falls back to).
    pub fn without_gso(mut self) -> MediaSocket {
        self.gso_segments = 1;
        self
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads one batch and hands each datagram to `handle` with its source and, if the kernel
    /// says, the address it was sent to; `Ok(0)` when none is waiting.
    pub fn receive(
        &mut self,
        mut handle: impl FnMut(SocketAddr, Option<IpAddr>, &[u8]),
    ) -> io::Result<usize> {
        let MediaSocket {
            socket,
            state,
            slots,
            meta,
            ..
        } = self;
        // On the stack: no allocation per batch.
        let mut slots = slots.chunks_mut(SLOT_SIZE);
        let mut buffers: [IoSliceMut<'_>; RECEIVE_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("RECEIVE_BATCH slots")));
        let received = match socket.try_io(Interest::READABLE, || {
            state.recv((&*socket).into(), &mut buffers, meta)
        }) {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut datagrams = 0;
        for (slot, meta) in buffers.iter().zip(meta.iter()).take(received) {
            let stride = meta.stride.max(1);
            for datagram in slot[..meta.len].chunks(stride) {
                datagrams += 1;
                handle(meta.addr, meta.dst_ip, datagram);
            }
        }
        Ok(datagrams)
    }

    /// Queues a datagram for the next [`MediaSocket::flush`].
    pub fn queue(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.outgoing.push(Outgoing {
            to,
            address: SockAddr::from(to),
            datagram,
        });
    }

    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Sends every queued datagram.
    pub fn flush(&mut self) -> Sent {
        let mut sent = Sent::default();
        let mut runs = [Run::default(); SEND_BATCH];
        let mut start = 0;
        while start < self.outgoing.len() {
            let pending = &self.outgoing[start..];
            let planned = plan_runs(pending, self.gso_segments, &mut runs);
            match send_runs(self.socket.as_raw_fd(), pending, &runs[..planned]) {
                Ok(messages) => {
                    let datagrams: usize = runs[..messages].iter().map(|run| run.count).sum();
                    sent.datagrams += datagrams as u64;
                    sent.messages += messages as u64;
                    start += datagrams;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // The buffer is full: this turn's rest is dropped, not waited for.
                    sent.dropped += pending.len() as u64;
                    break;
                }
                Err(err) if runs[0].count > 1 => {
                    // GSO refused (a device or kernel without it): each datagram on its own.
                    tracing::info!(%err, "UDP GSO unavailable; sending datagram by datagram");
                    self.gso_segments = 1;
                }
                Err(err) => {
                    // This datagram's address is refused (unreachable, not permitted): skip it.
                    tracing::debug!(%err, to = %pending[0].to, "media datagram not sent");
                    sent.dropped += 1;
                    start += 1;
                }
            }
        }
        self.outgoing.clear();
        sent
    }
}

/// Consecutive datagrams that go out as one message: `count` datagrams from `start`, each
/// `segment` bytes but the last, which may be shorter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    count: usize,
    segment: usize,
}

/// Groups the first datagrams of `pending` into at most `runs.len()` messages of at most
/// [`SEND_DATAGRAMS`] datagrams in all; returns how many runs it filled.
fn plan_runs(pending: &[Outgoing], max_segments: usize, runs: &mut [Run]) -> usize {
    let mut planned = 0;
    let mut datagrams = 0;
    for (index, outgoing) in pending.iter().enumerate() {
        if datagrams == SEND_DATAGRAMS {
            break;
        }
        let size = outgoing.datagram.len();
        if planned > 0 {
            let run = &mut runs[planned - 1];
            let previous = &pending[index - 1];
            let joins = run.count < max_segments
                && previous.to == outgoing.to
                && previous.datagram.len() == run.segment
                && size <= run.segment
                && (run.count + 1) * run.segment <= GSO_MAX_BYTES;
            if joins {
                run.count += 1;
                datagrams += 1;
                continue;
            }
        }
        if planned == runs.len() {
            break;
        }
        runs[planned] = Run {
            start: index,
            count: 1,
            segment: size,
        };
        planned += 1;
        datagrams += 1;
    }
    planned
}

/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE(size_of::<u16>())`), in words so it
/// is aligned for `cmsghdr`.
type Control = [u64; 4];

/// One `sendmmsg` of `runs` over `pending`; how many messages (runs) the kernel took.
fn send_runs(fd: i32, pending: &[Outgoing], runs: &[Run]) -> io::Result<usize> {
    debug_assert!(runs.len() <= SEND_BATCH);
    // SAFETY: all-zero is a valid `iovec`, `mmsghdr` and control buffer.
    let mut iovecs: [libc::iovec; SEND_DATAGRAMS] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut controls: [Control; SEND_BATCH] = [[0; 4]; SEND_BATCH];
    let mut next_iovec = 0;
    for (index, run) in runs.iter().enumerate() {
        let first_iovec = next_iovec;
        for outgoing in &pending[run.start..run.start + run.count] {
            iovecs[next_iovec] = libc::iovec {
                iov_base: outgoing.datagram.as_ptr() as *mut libc::c_void,
                iov_len: outgoing.datagram.len(),
            };
            next_iovec += 1;
        }
        let address = &pending[run.start].address;
        let header = &mut headers[index].msg_hdr;
        header.msg_name = address.as_ptr() as *mut libc::c_void;
        header.msg_namelen = address.len();
        header.msg_iov = &mut iovecs[first_iovec];
        header.msg_iovlen = run.count;
        if run.count > 1 {
            let control = &mut controls[index];
            header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE of a u16 (24 bytes on Linux) fits the 32-byte control buffer,
            // which `msg_control` points at; CMSG_FIRSTHDR and CMSG_DATA stay within it.
            unsafe {
                let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
                debug_assert!(space <= std::mem::size_of::<Control>());
                header.msg_controllen = space;
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, run.segment as u16);
            }
        }
    }
    loop {
        // SAFETY: every header points at an address, iovecs and a control buffer that live in
        // `pending`, `iovecs` and `controls` until the call returns; the kernel only reads them.
        let result =
            unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), runs.len() as libc::c_uint, 0) };
        if result >= 0 {
            return Ok(result as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_goes_out_and_comes_back_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("a socket");
        let address = receiver.local_addr().expect("its address");
        let mut socket =
            MediaSocket::new(UdpSocket::bind("127.0.0.1:0").expect("a socket")).expect("wrapped");
        for index in 0..100u8 {
            socket.queue(address, BytesMut::from(&[index; 300][..]));
        }
        assert_eq!(socket.queued(), 100);
        let gso = socket.gso_segments > 1;
        let sent = socket.flush();
        assert_eq!((sent.datagrams, sent.dropped), (100, 0));
        // One destination, one size: runs of GSO messages where the kernel has it.
        assert!(
            if gso {
                sent.messages < 100
            } else {
                sent.messages == 100
            },
            "{sent:?}"
        );
        assert_eq!(socket.queued(), 0);
        let mut buffer = [0; 1500];
        for index in 0..100u8 {
            let (size, _) = receiver.recv_from(&mut buffer).expect("a datagram");
            assert_eq!((size, buffer[0]), (300, index));
        }
    }

    /// Datagrams of several sizes to several receivers, interleaved: each receiver gets its
    /// own, whole and in order, with GSO and without.
    #[tokio::test]
    async fn mixed_destinations_and_sizes_arrive_whole_and_in_order() {
        for gso in [true, false] {
            let receivers: Vec<UdpSocket> = (0..3)
                .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a socket"))
                .collect();
            let socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0").expect("a socket"))
                .expect("wrapped");
            let mut socket = if gso { socket } else { socket.without_gso() };
            let sizes = [1200usize, 1200, 1200, 700, 1200, 50, 50, 1200];
            let mut expected: Vec<Vec<(usize, u8)>> = vec![Vec::new(); 3];
            let mut tag = 0u8;
            for round in 0..20 {
                for (index, size) in sizes.iter().enumerate() {
                    let receiver = (round + index / 3) % 3;
                    let address = receivers[receiver].local_addr().expect("its address");
                    socket.queue(address, BytesMut::from(&vec![tag; *size][..]));
                    expected[receiver].push((*size, tag));
                    tag = tag.wrapping_add(1);
                }
            }
            let sent = socket.flush();
            assert_eq!((sent.datagrams, sent.dropped), (160, 0), "{sent:?}");
            let mut buffer = [0; 2048];
            for (receiver, expected) in receivers.iter().zip(&expected) {
                for &(size, tag) in expected {
                    let got = receiver.recv(&mut buffer).expect("a datagram");
                    assert_eq!(got, size);
                    assert!(buffer[..got].iter().all(|&byte| byte == tag));
                }
            }
        }
    }

    #[test]
    fn runs_join_equal_datagrams_to_one_destination_and_end_at_a_shorter_one() {
        let at = |port: u16, size: usize| {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            Outgoing {
                to,
                address: SockAddr::from(to),
                datagram: BytesMut::from(&vec![0; size][..]),
            }
        };
        let pending = [
            at(1, 1000),
            at(1, 1000),
            at(1, 600),
            at(1, 1000),
            at(2, 1000),
            at(2, 1200),
            at(1, 1000),
        ];
        let mut runs = [Run::default(); 8];
        let planned = plan_runs(&pending, 64, &mut runs);
        let shape: Vec<(usize, usize, usize)> = runs[..planned]
            .iter()
            .map(|run| (run.start, run.count, run.segment))
            .collect();
        // A shorter datagram closes its run; a longer one, or another destination, starts one.
        assert_eq!(
            shape,
            [
                (0, 3, 1000),
                (3, 1, 1000),
                (4, 1, 1000),
                (5, 1, 1200),
                (6, 1, 1000)
            ]
        );
        // Without GSO, one datagram a message; and never more runs than asked for.
        assert_eq!(plan_runs(&pending, 1, &mut runs), 7);
        assert_eq!(plan_runs(&pending, 64, &mut runs[..2]), 2);
        assert_eq!((runs[1].start, runs[1].count), (3, 1));
    }

    #[tokio::test]
    async fn received_datagrams_keep_their_sender_and_bounds() {
        let mut socket =
            MediaSocket::new(UdpSocket::bind("127.0.0.1:0").expect("a socket")).expect("wrapped");
        let address = socket.socket.local_addr().expect("its address");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("a socket");
        for size in [10usize, 1200, 1200, 1200, 7] {
            sender
                .send_to(&vec![size as u8; size], address)
                .expect("sent");
        }
        let mut seen = Vec::new();
        while seen.len() < 5 {
            socket.readable().await.expect("readable");
            socket
                .receive(|from, _, datagram| {
                    assert_eq!(from, sender.local_addr().expect("its address"));
                    assert!(datagram.iter().all(|&byte| byte == datagram.len() as u8));
                    seen.push(datagram.len());
                })
                .expect("received");
        }
        assert_eq!(seen, [10, 1200, 1200, 1200, 7]);
    }
}
