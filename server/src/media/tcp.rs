//! ICE over TCP (RFC 6544, passive; RFC 4571 framing) on the worker's port number, for networks
//! that block UDP. Each accepted connection is a task on the worker's own runtime (the same
//! thread): it turns frames into datagrams for the worker loop and writes the loop's datagrams
//! back framed. A connection the worker cannot place (its first frame names no peer of the
//! worker) is closed, as is one that says nothing within [`FIRST_FRAME_WITHIN`]; a peer that
//! reads too slowly loses its own datagrams, never holding up the loop.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use bytes::BytesMut;
use rtc::shared::tcp_framing::TcpFrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A connection must bring its first frame within this (a STUN check, in practice at once).
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);
/// Datagrams waiting to be written on one connection; more are dropped.
const OUTGOING_CAPACITY: usize = 512;
/// Frames read and not yet taken by the worker loop, across connections; readers wait beyond.
const INCOMING_CAPACITY: usize = 4096;
/// A write that takes longer ends the connection.
const WRITE_WITHIN: Duration = Duration::from_secs(5);

/// A frame from a connection, or (`None`) its end.
pub struct TcpFrame {
    pub from: SocketAddr,
    /// The connection's own end: which of the worker's addresses the peer reached.
    pub local: SocketAddr,
    pub frame: Option<BytesMut>,
}

/// The worker's TCP listener and its open connections.
pub struct TcpLinks {
    listener: tokio::net::TcpListener,
    links: HashMap<SocketAddr, mpsc::Sender<BytesMut>>,
    frames: mpsc::Sender<TcpFrame>,
    max_links: usize,
}

/// Where every connection's frames come out, in arrival order.
pub type TcpFrames = mpsc::Receiver<TcpFrame>;

impl TcpLinks {
    /// Wraps a bound listener (must run inside the worker's runtime), and the frames its
    /// connections will bring.
    pub fn new(listener: TcpListener, max_links: usize) -> io::Result<(TcpLinks, TcpFrames)> {
        listener.set_nonblocking(true)?;
        let (frames, receiver) = mpsc::channel(INCOMING_CAPACITY);
        let links = TcpLinks {
            listener: tokio::net::TcpListener::from_std(listener)?,
            links: HashMap::new(),
            frames,
            max_links,
        };
        Ok((links, receiver))
    }

    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// Starts serving an accepted connection, unless the worker holds its limit of them.
    pub fn start(&mut self, stream: TcpStream, from: SocketAddr) {
        if self.links.len() >= self.max_links {
            tracing::warn!(%from, limit = self.max_links, "ICE-TCP connection refused: at the limit");
            return;
        }
        let _ = stream.set_nodelay(true);
        let (outgoing_tx, outgoing) = mpsc::channel(OUTGOING_CAPACITY);
        self.links.insert(from, outgoing_tx);
        tokio::spawn(serve(stream, from, self.frames.clone(), outgoing));
    }

    /// Queues `datagram` for the connection from `to`; false when it is dropped (no such
    /// connection, or it is not keeping up).
    pub fn send(&mut self, to: SocketAddr, datagram: BytesMut) -> bool {
        self.links
            .get(&to)
            .is_some_and(|link| link.try_send(datagram).is_ok())
    }

    /// Closes the connection from `peer` (its task ends once it sees the link gone).
    pub fn close(&mut self, peer: SocketAddr) {
        self.links.remove(&peer);
    }
}

async fn serve(
    stream: TcpStream,
    from: SocketAddr,
    frames: mpsc::Sender<TcpFrame>,
    mut outgoing: mpsc::Receiver<BytesMut>,
) {
    let Ok(local) = stream.local_addr() else {
        let _ = frames
            .send(TcpFrame {
                from,
                local: from,
                frame: None,
            })
            .await;
        return;
    };
    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = TcpFrameDecoder::new();
    let mut buffer = vec![0; 16 * 1024];
    let mut spoken = false;
    let first_frame_due = tokio::time::sleep(FIRST_FRAME_WITHIN);
    tokio::pin!(first_frame_due);
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => {
                let size = match read {
                    Ok(0) | Err(_) => break,
                    Ok(size) => size,
                };
                decoder.extend_from_slice(&buffer[..size]);
                while let Some(packet) = decoder.next_packet() {
                    spoken = true;
                    let frame = TcpFrame { from, local, frame: Some(BytesMut::from(&packet[..])) };
                    if frames.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            datagram = outgoing.recv() => {
                let Some(datagram) = datagram else { break };
                let Ok(length) = u16::try_from(datagram.len()) else { continue };
                let mut framed = Vec::with_capacity(2 + datagram.len());
                framed.extend_from_slice(&length.to_be_bytes());
                framed.extend_from_slice(&datagram);
                match tokio::time::timeout(WRITE_WITHIN, writer.write_all(&framed)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            () = &mut first_frame_due, if !spoken => break,
        }
    }
    let _ = frames
        .send(TcpFrame {
            from,
            local,
            frame: None,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_in_whole_and_go_out_framed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let address = listener.local_addr().expect("its address");
        let (mut links, mut frames) = TcpLinks::new(listener, 4).expect("wrapped");
        let mut client = TcpStream::connect(address).await.expect("connected");
        let (stream, from) = links.accept().await.expect("accepted");
        links.start(stream, from);
        // Two frames, the second split across writes.
        client
            .write_all(&[0, 3, 1, 2, 3, 0, 2, 9])
            .await
            .expect("written");
        client.write_all(&[8]).await.expect("written");
        for expected in [&[1u8, 2, 3][..], &[9, 8]] {
            let frame = frames.recv().await.expect("a frame");
            assert_eq!(frame.from, from);
            assert_eq!(frame.frame.as_deref(), Some(expected));
        }
        assert!(links.send(from, BytesMut::from(&[7u8, 7][..])));
        let mut answer = [0; 4];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(answer, [0, 2, 7, 7]);
        // Closed by the worker: the client sees the end, the worker the link's.
        links.close(from);
        assert_eq!(client.read(&mut answer).await.expect("read"), 0);
        assert!(frames.recv().await.expect("the end").frame.is_none());
        assert!(!links.send(from, BytesMut::new()));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let address = listener.local_addr().expect("its address");
        let (mut links, _frames) = TcpLinks::new(listener, 1).expect("wrapped");
        let _first = TcpStream::connect(address).await.expect("connected");
        let (stream, from) = links.accept().await.expect("accepted");
        links.start(stream, from);
        let mut second = TcpStream::connect(address).await.expect("connected");
        let (stream, from) = links.accept().await.expect("accepted");
        links.start(stream, from);
        assert_eq!(links.links.len(), 1);
        let mut byte = [0; 1];
        assert_eq!(second.read(&mut byte).await.expect("read"), 0);
    }
}
