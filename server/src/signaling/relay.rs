//! A channel whose room lives on another node of the cluster ([`crate::cluster`]): the client's
//! frames for its topic go to that node over a WebSocket of their own, and that node's frames
//! come back to the client unchanged. The client never notices, so any Membrane client works
//! through any node; its media goes straight to the room's node, whose candidates the offer
//! carries. The relaying node shows the cluster's secret and the client's address, so the
//! room's node applies its per-address limits to the client and not to the relay.
//!
//! Why a relay and not a redirect: a redirect needs a client that follows it, and clients
//! written for the Membrane server do not.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::phoenix::PHOENIX_TOPIC;
use shared::{Frame, PhoenixEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The header a relaying node shows the cluster's secret in.
pub const RELAY_SECRET_HEADER: &str = "x-videoroom-relay";
/// The header it names the client's address in.
pub const RELAY_CLIENT_HEADER: &str = "x-videoroom-client";
/// The relay's own heartbeat to the room's node, which drops a silent socket after 60 s.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long the room's node may take to accept the relay's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the node's URL {0} is not http:// or https://")]
    BadUrl(String),
    #[error("cannot reach the room's node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// What comes back from the room's node.
#[derive(Debug)]
pub enum FromNode {
    /// A frame for the client, as the node wrote it.
    Frame(String),
    /// The node's socket closed: the room's node is gone (or closed it, saying why).
    Closed { topic: String, reason: String },
}

/// One relayed channel.
pub struct Relay {
    to_node: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Opens a socket to the node at `node_url` (its public HTTP URL) for `topic`, on behalf of
    /// `client` (with its join `token`, if any); what the node sends comes to `from_node`.
    pub async fn open(
        node_url: &str,
        secret: &str,
        client: SocketAddr,
        token: Option<&str>,
        topic: String,
        from_node: mpsc::Sender<FromNode>,
    ) -> Result<Relay, RelayError> {
        let socket_url = socket_url(node_url, token)?;
        let unreachable = |reason: String| RelayError::Unreachable {
            url: socket_url.clone(),
            reason,
        };
        let mut request = socket_url
            .as_str()
            .into_client_request()
            .map_err(|err| unreachable(err.to_string()))?;
        let headers = request.headers_mut();
        let value =
            |text: &str| HeaderValue::from_str(text).map_err(|err| unreachable(err.to_string()));
        headers.insert(RELAY_SECRET_HEADER, value(secret)?);
        headers.insert(RELAY_CLIENT_HEADER, value(&client.to_string())?);
        let (socket, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                .map_err(|err| unreachable(err.to_string()))?;
        let (to_node, mut outgoing) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            heartbeat.tick().await;
            let reason = loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            // The relay's own heartbeat replies are not the client's.
                            if is_heartbeat_reply(&text) {
                                continue;
                            }
                            if from_node.send(FromNode::Frame(text.to_string())).await.is_err() {
                                return; // the client's socket is gone
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            break frame.map_or_else(String::new, |frame| frame.reason.to_string());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => break err.to_string(),
                        None => break String::new(),
                    },
                    text = outgoing.recv() => match text {
                        Some(text) => {
                            if let Err(err) = sink.send(Message::text(text)).await {
                                break err.to_string();
                            }
                        }
                        None => {
                            let _ = sink.close().await;
                            return;
                        }
                    },
                    _ = heartbeat.tick() => {
                        let beat = Frame {
                            join_ref: None,
                            msg_ref: Some("relay".to_owned()),
                            topic: PHOENIX_TOPIC.to_owned(),
                            event: PhoenixEvent::Heartbeat,
                            payload: serde_json::Map::new(),
                        };
                        if let Err(err) = sink.send(Message::text(beat.encode())).await {
                            break err.to_string();
                        }
                    }
                }
            };
            let _ = from_node.send(FromNode::Closed { topic, reason }).await;
        });
        Ok(Relay { to_node, task })
    }

    /// Sends a client's frame on to the room's node.
    pub fn send(&self, text: String) {
        // A relay whose task ended has told the socket already.
        let _ = self.to_node.send(text);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The node sees the socket close, and the peer leave.
        self.task.abort();
    }
}

/// The signaling socket's URL at a node's public HTTP URL.
fn socket_url(node_url: &str, token: Option<&str>) -> Result<String, RelayError> {
    let base = node_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(RelayError::BadUrl(node_url.to_owned()));
    };
    let mut url = format!("{base}/socket/websocket?vsn=2.0.0");
    if let Some(token) = token {
        url.push_str("&token=");
        url.push_str(&percent_encode(token));
    }
    Ok(url)
}

/// `text` made safe for a URL's query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn is_heartbeat_reply(text: &str) -> bool {
    Frame::decode(text).is_ok_and(|frame| frame.topic == PHOENIX_TOPIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_follows_the_nodes_scheme_and_carries_the_token() {
        assert_eq!(
            socket_url("http://10.0.0.2:4000/", None).unwrap(),
            "ws://10.0.0.2:4000/socket/websocket?vsn=2.0.0"
        );
        assert_eq!(
            socket_url("https://b.example", Some("a.b+c=")).unwrap(),
            "wss://b.example/socket/websocket?vsn=2.0.0&token=a.b%2Bc%3D"
        );
        assert!(matches!(
            socket_url("ftp://x", None),
            Err(RelayError::BadUrl(_))
        ));
    }
}
