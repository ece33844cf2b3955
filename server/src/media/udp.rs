//! A media worker's UDP socket, shared by every peer connection on the worker: datagrams come
//! in by the batch (`recvmmsg`, with GRO where the kernel has it, through `quinn-udp`) and
//! everything one loop turn produced goes out in as few system calls as possible (`sendmmsg`).
//! Sending never waits: a datagram the kernel will not take now is dropped and counted, so one
//! subscriber that cannot keep up never holds up the others.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::SockAddr;
use tokio::io::Interest;

/// Datagrams read per system call.
const RECEIVE_BATCH: usize = 32;
/// Room for a GRO-coalesced run of datagrams in one slot.
const SLOT_SIZE: usize = 64 * 1024;
/// Datagrams written per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Socket buffers big enough to ride out a loop turn's burst to hundreds of subscribers (the
/// kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// What happened to the datagrams of one flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    /// Refused by the kernel now (a full buffer) or for good (an unreachable address).
    pub dropped: u64,
}

pub struct MediaSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    slots: Vec<u8>,
    meta: Vec<RecvMeta>,
    outgoing: Vec<(SockAddr, BytesMut)>,
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
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
            slots: vec![0; RECEIVE_BATCH * SLOT_SIZE],
            meta: vec![RecvMeta::default(); RECEIVE_BATCH],
            outgoing: Vec::with_capacity(SEND_BATCH),
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads one batch and hands each datagram to `handle`; `Ok(0)` when none is waiting.
    pub fn receive(&mut self, mut handle: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let MediaSocket {
            socket,
            state,
            slots,
            meta,
            ..
        } = self;
        let mut buffers: Vec<IoSliceMut<'_>> = Vec::with_capacity(RECEIVE_BATCH);
        buffers.extend(slots.chunks_mut(SLOT_SIZE).map(IoSliceMut::new));
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
                handle(meta.addr, datagram);
            }
        }
        Ok(datagrams)
    }

    /// Queues a datagram for the next [`MediaSocket::flush`].
    pub fn queue(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.outgoing.push((SockAddr::from(to), datagram));
    }

    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Sends every queued datagram, `SEND_BATCH` per system call.
    pub fn flush(&mut self) -> Sent {
        let mut sent = Sent::default();
        let mut start = 0;
        while start < self.outgoing.len() {
            let end = (start + SEND_BATCH).min(self.outgoing.len());
            match send_batch(self.socket.as_raw_fd(), &self.outgoing[start..end]) {
                Ok(count) => {
                    sent.datagrams += count as u64;
                    start += count.max(1);
                    if count == 0 {
                        sent.dropped += 1;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // The buffer is full: this turn's rest is dropped, not waited for.
                    sent.dropped += (self.outgoing.len() - start) as u64;
                    break;
                }
                Err(err) => {
                    // This datagram's address is refused (unreachable, not permitted): skip it.
                    tracing::debug!(%err, to = ?self.outgoing[start].0.as_socket(), "media datagram not sent");
                    sent.dropped += 1;
                    start += 1;
                }
            }
        }
        self.outgoing.clear();
        sent
    }
}

/// One `sendmmsg` of `batch` (at most [`SEND_BATCH`]); how many the kernel took.
fn send_batch(fd: i32, batch: &[(SockAddr, BytesMut)]) -> io::Result<usize> {
    debug_assert!(batch.len() <= SEND_BATCH);
    // SAFETY: all-zero is a valid `iovec` and `mmsghdr` (null pointers, zero lengths).
    let mut iovecs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for (index, (address, datagram)) in batch.iter().enumerate() {
        iovecs[index] = libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        };
        let header = &mut headers[index].msg_hdr;
        header.msg_name = address.as_ptr() as *mut libc::c_void;
        header.msg_namelen = address.len();
        header.msg_iov = &mut iovecs[index];
        header.msg_iovlen = 1;
    }
    loop {
        // SAFETY: every header points at an address and one iovec that live in `batch`,
        // `iovecs` and this frame until the call returns; the kernel only reads them.
        let result =
            unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), batch.len() as libc::c_uint, 0) };
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
        let sent = socket.flush();
        assert_eq!(
            sent,
            Sent {
                datagrams: 100,
                dropped: 0
            }
        );
        assert_eq!(socket.queued(), 0);
        let mut buffer = [0; 1500];
        for index in 0..100u8 {
            let (size, _) = receiver.recv_from(&mut buffer).expect("a datagram");
            assert_eq!((size, buffer[0]), (300, index));
        }
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
                .receive(|from, datagram| {
                    assert_eq!(from, sender.local_addr().expect("its address"));
                    assert!(datagram.iter().all(|&byte| byte == datagram.len() as u8));
                    seen.push(datagram.len());
                })
                .expect("received");
        }
        assert_eq!(seen, [10, 1200, 1200, 1200, 7]);
    }
}
