//! The signaling socket on a real WebSocket: Phoenix Channels V2 framing (heartbeats, joins,
//! leaves, replies, pushes), the media `join` and the peer announcements, and how the server
//! answers bad, oversized, binary and flooding input (docs/protocol.md, sections 1 and 2).

use std::time::{Duration, Instant};

use anyhow::bail;
use e2e::phoenix::{error_reason, Channel, PhoenixClient};
use e2e::TestServer;
use serde_json::{json, Value};
use shared::client_event::{Join, UpdatePeerMetadata};
use shared::server_event::{PeerInfo, PeerJoined, PeerLeft, PeerWithTracks};
use shared::{ClientEvent, Frame, PeerId, PhoenixEvent, ServerEvent};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// How long a socket must stay quiet to count as undisturbed: pushes on loopback arrive within
/// milliseconds, so anything the server meant to send would have come by then.
const QUIET: Duration = Duration::from_millis(300);

/// A frame written out as it goes on the wire.
fn frame(text: &str) -> Frame {
    Frame::decode(text).unwrap_or_else(|err| panic!("bad frame in the test {text}: {err}"))
}

fn metadata_of(name: &str) -> Value {
    json!({ "displayName": name })
}

/// A `mediaEvent` frame from the client carrying `data` as is, valid or not.
fn raw_media_event(channel: &Channel, msg_ref: &str, data: &str) -> Frame {
    Frame::media_event(
        Some(channel.join_ref.clone()),
        Some(msg_ref.to_owned()),
        &channel.topic,
        data.to_owned(),
    )
}

/// Checks that `frame` is a server push on `channel`: `ref` null, the channel's current join_ref.
fn assert_push_on(frame: &Frame, channel: &Channel) {
    assert_eq!(frame.event, PhoenixEvent::MediaEvent, "{}", frame.encode());
    assert_eq!(frame.topic, channel.topic, "{}", frame.encode());
    assert_eq!(frame.msg_ref, None, "{}", frame.encode());
    assert_eq!(
        frame.join_ref.as_deref(),
        Some(channel.join_ref.as_str()),
        "{}",
        frame.encode()
    );
}

/// Polls `/stats` until it shows `rooms` rooms and `peers` peers: rooms close in their own
/// task, a moment after their last peer left.
async fn wait_for_counts(server: &TestServer, rooms: usize, peers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let counts = server.counts().await?;
        if counts.rooms == rooms && counts.peers == peers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/stats still shows {counts:?}, expected {rooms} rooms and {peers} peers");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A peer in `room`: a socket with the topic joined and the media `join` accepted.
async fn peer_in_room(
    server: &TestServer,
    room: &str,
    name: &str,
) -> anyhow::Result<(PhoenixClient, Channel, PeerId)> {
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;
    let channel = client.join(&format!("room:{room}")).await?;
    let accepted = client.join_room(&channel, metadata_of(name)).await?;
    Ok((client, channel, accepted.id))
}

#[tokio::test]
async fn heartbeat_gets_an_ok_reply() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;

    client
        .send_message(Message::text(r#"[null,"1","phoenix","heartbeat",{}]"#))
        .await?;
    let reply = client.recv().await?;
    assert_eq!(
        reply,
        frame(r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#)
    );
    Ok(())
}

#[tokio::test]
async fn joined_peers_are_accepted_and_announced_to_each_other() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut ann = PhoenixClient::connect(&server.socket_url()).await?;

    ann.send(&frame(r#"["7","7","room:r1","phx_join",{}]"#))
        .await?;
    assert_eq!(
        ann.recv().await?,
        frame(r#"["7","7","room:r1","phx_reply",{"status":"ok","response":{}}]"#)
    );
    let ann_channel = Channel {
        topic: "room:r1".to_owned(),
        join_ref: "7".to_owned(),
    };

    let join = ClientEvent::Join(Join {
        metadata: metadata_of("Ann"),
    });
    ann.push(&ann_channel, &join).await?;
    let (accepted_frame, accepted) = ann.next_media_event().await?;
    assert_push_on(&accepted_frame, &ann_channel);
    let ServerEvent::PeerAccepted(accepted) = accepted else {
        bail!("expected `peerAccepted`, got {}", accepted_frame.encode());
    };
    let ann_id = accepted.id;
    let uuid = uuid::Uuid::parse_str(ann_id.as_str())?;
    assert_eq!(uuid.get_version(), Some(uuid::Version::Random), "{ann_id}");
    assert_eq!(accepted.peers_in_room, vec![]);

    let (joined_frame, joined) = ann.next_media_event().await?;
    assert_push_on(&joined_frame, &ann_channel);
    assert_eq!(
        joined,
        ServerEvent::PeerJoined(PeerJoined {
            peer: PeerInfo {
                id: ann_id.clone(),
                metadata: metadata_of("Ann"),
            }
        })
    );

    // A second socket in the same room is told about Ann, and Ann about it.
    let mut bob = PhoenixClient::connect(&server.socket_url()).await?;
    let bob_channel = bob.join("room:r1").await?;
    bob.push(
        &bob_channel,
        &ClientEvent::Join(Join {
            metadata: metadata_of("Bob"),
        }),
    )
    .await?;
    let (accepted_frame, accepted) = bob.next_media_event().await?;
    assert_push_on(&accepted_frame, &bob_channel);
    let ServerEvent::PeerAccepted(accepted) = accepted else {
        bail!("expected `peerAccepted`, got {}", accepted_frame.encode());
    };
    let bob_id = accepted.id;
    assert_ne!(bob_id, ann_id);
    assert_eq!(
        accepted.peers_in_room,
        vec![PeerWithTracks {
            id: ann_id.clone(),
            metadata: metadata_of("Ann"),
            track_id_to_metadata: Default::default(),
        }]
    );
    let bob_joined = ServerEvent::PeerJoined(PeerJoined {
        peer: PeerInfo {
            id: bob_id.clone(),
            metadata: metadata_of("Bob"),
        },
    });
    let (joined_frame, joined) = bob.next_media_event().await?;
    assert_push_on(&joined_frame, &bob_channel);
    assert_eq!(joined, bob_joined);

    let (joined_frame, joined) = ann.next_media_event().await?;
    assert_push_on(&joined_frame, &ann_channel);
    assert_eq!(joined, bob_joined);
    ann.expect_silence(QUIET).await?;
    bob.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn frames_for_topics_not_joined_or_not_rooms_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;

    let leave = ClientEvent::Leave.encode();
    let never_joined = Channel {
        topic: "room:never".to_owned(),
        join_ref: "1".to_owned(),
    };
    client
        .send(&raw_media_event(&never_joined, "2", &leave))
        .await?;
    assert_eq!(
        client.recv().await?,
        frame(
            r#"["1","2","room:never","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        )
    );

    client
        .send(&frame(r#"["3","3","lobby:x","phx_join",{}]"#))
        .await?;
    assert_eq!(
        client.recv().await?,
        frame(
            r#"["3","3","lobby:x","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        )
    );

    client
        .send(&frame(r#"["4","4","room:bad name!","phx_join",{}]"#))
        .await?;
    let reply = client.recv().await?;
    assert_eq!(
        (reply.join_ref.as_deref(), reply.msg_ref.as_deref()),
        (Some("4"), Some("4")),
        "{}",
        reply.encode()
    );
    assert_eq!(reply.topic, "room:bad name!");
    let reason = error_reason(&reply)?;
    assert!(
        reason.contains("room name must be") && reason.contains("letters, digits"),
        "the reason does not state the room name rule: {reason}"
    );

    // Refused joins leave nothing behind: a media event on the bad topic is still unmatched.
    let bad_room = Channel {
        topic: "room:bad name!".to_owned(),
        join_ref: "4".to_owned(),
    };
    client
        .send(&raw_media_event(&bad_room, "5", &leave))
        .await?;
    assert_eq!(error_reason(&client.recv().await?)?, "unmatched topic");
    Ok(())
}

#[tokio::test]
async fn a_second_join_of_a_topic_closes_the_first() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut ann, first_channel, first_id) = peer_in_room(&server, "dup", "Ann").await?;
    let (mut bob, _, bob_id) = peer_in_room(&server, "dup", "Bob").await?;
    let (_, joined) = ann.wait_for("peerJoined").await?;
    assert!(
        matches!(&joined, ServerEvent::PeerJoined(joined) if joined.peer.id == bob_id),
        "{joined:?}"
    );

    let rejoin_ref = ann.next_ref();
    let rejoin = Frame::request(
        Some(rejoin_ref.clone()),
        rejoin_ref,
        "room:dup",
        PhoenixEvent::Join,
        json!({}),
    );
    ann.send(&rejoin).await?;
    // The old channel is closed with its own join_ref in both slots, before the new join's reply.
    let old_ref = &first_channel.join_ref;
    assert_eq!(
        ann.recv().await?,
        frame(&format!(
            r#"["{old_ref}","{old_ref}","room:dup","phx_close",{{}}]"#
        ))
    );
    assert_eq!(ann.recv().await?, rejoin.reply_ok());

    let (left_frame, left) = bob.next_media_event().await?;
    assert_eq!(
        left,
        ServerEvent::PeerLeft(PeerLeft {
            peer_id: first_id.clone()
        }),
        "{}",
        left_frame.encode()
    );
    wait_for_counts(&server, 1, 1).await?;
    ann.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn leaving_a_topic_closes_it_and_the_empty_room_goes_away() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut ann, channel, _) = peer_in_room(&server, "leave", "Ann").await?;
    wait_for_counts(&server, 1, 1).await?;

    let leave_ref = ann.next_ref();
    let leave = Frame::request(
        Some(channel.join_ref.clone()),
        leave_ref,
        &channel.topic,
        PhoenixEvent::Leave,
        json!({}),
    );
    ann.send(&leave).await?;
    assert_eq!(ann.recv().await?, leave.reply_ok());
    let join_ref = &channel.join_ref;
    assert_eq!(
        ann.recv().await?,
        frame(&format!(
            r#"["{join_ref}","{join_ref}","room:leave","phx_close",{{}}]"#
        ))
    );

    // Leaving a topic that is not joined is still ok, and closes nothing.
    ann.send(&frame(r#"[null,"40","room:elsewhere","phx_leave",{}]"#))
        .await?;
    assert_eq!(
        ann.recv().await?,
        frame(r#"[null,"40","room:elsewhere","phx_reply",{"status":"ok","response":{}}]"#)
    );
    ann.expect_silence(QUIET).await?;

    wait_for_counts(&server, 0, 0).await?;
    ann.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_an_error_reply_and_disturbs_no_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut bob, _, _) = peer_in_room(&server, "bad", "Bob").await?;
    let mut ann = PhoenixClient::connect(&server.socket_url()).await?;
    let channel = ann.join("room:bad").await?;

    // A media event before the media `join` is refused with the request's refs.
    let update = ClientEvent::UpdatePeerMetadata(UpdatePeerMetadata {
        metadata: metadata_of("Ann"),
    });
    let early_ref = ann.next_ref();
    let early = raw_media_event(&channel, &early_ref, &update.encode());
    let reply = ann.request(&early).await?;
    let reason = error_reason(&reply)?;
    assert!(
        reason.contains("updatePeerMetadata") && reason.contains("before `join`"),
        "{reason}"
    );
    assert_eq!(
        (&reply.join_ref, &reply.msg_ref),
        (&early.join_ref, &early.msg_ref)
    );

    let accepted = ann.join_room(&channel, metadata_of("Ann")).await?;
    let (_, joined) = bob.next_media_event().await?;
    assert!(
        matches!(&joined, ServerEvent::PeerJoined(joined) if joined.peer.id == accepted.id),
        "{joined:?}"
    );

    // Every reason is checked, and the wrong ones reported together at the end, so that one
    // unclear message does not hide how the server handles the other inputs.
    let mut unclear_reasons = Vec::new();

    // Text that is no frame has no ref to echo: the error comes on the `phoenix` topic.
    let not_frames = [
        ("not json", "malformed JSON"),
        ("{not json", "malformed JSON"),
        (r#"[null,"1","phoenix","heartbeat",{}"#, "malformed JSON"),
        (r#"["1","2","room:bad","phx_join"]"#, "tuple of size 5"),
        (r#"{"topic":"room:bad"}"#, "tuple of size 5"),
    ];
    for (text, expected) in not_frames {
        ann.send_message(Message::text(text)).await?;
        let reply = ann.recv().await?;
        assert_eq!(reply.topic, "phoenix", "{}", reply.encode());
        let reason = error_reason(&reply)?;
        if !reason.contains(expected) {
            unclear_reasons.push(format!("{text} got {}", reply.encode()));
        }
        ann.heartbeat().await?;
    }

    // Media events that do not decode are refused with the request's refs.
    let bad_events = [
        (
            r#"{"type":"frobnicate","data":{}}"#,
            "unknown event type `frobnicate`",
        ),
        (
            r#"{"type":"updatePeerMetadata","data":{}}"#,
            "`updatePeerMetadata` is missing field `metadata`",
        ),
        (
            r#"{"type":"custom","data":{"type":"candidate","data":{"sdpMLineIndex":0}}}"#,
            "`candidate` is missing field `candidate`",
        ),
    ];
    for (data, expected) in bad_events {
        let msg_ref = ann.next_ref();
        let request = raw_media_event(&channel, &msg_ref, data);
        let reply = ann.request(&request).await?;
        assert_eq!(
            (&reply.join_ref, &reply.msg_ref),
            (&request.join_ref, &request.msg_ref)
        );
        let reason = error_reason(&reply)?;
        if !reason.contains(expected) {
            unclear_reasons.push(format!("{} got {}", request.encode(), reply.encode()));
        }
        ann.heartbeat().await?;
    }

    // Nothing reached Bob: no error, no `peerLeft` for Ann, and his socket still answers.
    bob.expect_silence(QUIET).await?;
    bob.heartbeat().await?;
    // Ann is still in the room.
    wait_for_counts(&server, 1, 2).await?;
    ann.expect_silence(QUIET).await?;
    assert!(
        unclear_reasons.is_empty(),
        "error replies that do not say what was wrong:\n{}",
        unclear_reasons.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_binary_message_closes_the_socket_with_1003() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;
    client.heartbeat().await?;

    client
        .send_message(Message::binary(vec![0x5b, 0x5d]))
        .await?;
    let close = client.expect_close().await?;
    assert_eq!(close.code, CloseCode::Unsupported, "{close:?}");
    Ok(())
}

/// A well-formed heartbeat padded to `size` bytes.
fn padded_heartbeat(size: usize) -> String {
    let empty = Frame::request(
        None,
        "1".to_owned(),
        "phoenix",
        PhoenixEvent::Heartbeat,
        json!({ "padding": "" }),
    );
    let padding = "x".repeat(size - empty.encode().len());
    let padded = Frame::request(
        None,
        "1".to_owned(),
        "phoenix",
        PhoenixEvent::Heartbeat,
        json!({ "padding": padding }),
    );
    padded.encode()
}

#[tokio::test]
async fn a_message_over_the_size_limit_gets_a_too_large_error() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let limit = server::Config::defaults().limits.max_frame_bytes;
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;

    let text = padded_heartbeat(limit * 3 / 2);
    client.send_message(Message::text(text)).await?;
    let reply = client.recv().await?;
    let reason = error_reason(&reply)?;
    assert!(
        reason.contains("is over the limit of")
            && reason.contains(&limit.to_string())
            && reason.contains("--max-frame-bytes"),
        "{reason}"
    );
    client.heartbeat().await?;

    // Past twice the limit the socket is closed as too big, saying which limit.
    client
        .send_message(Message::text(padded_heartbeat(limit * 3)))
        .await?;
    let close = client.expect_close().await?;
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
    assert!(close.reason.contains("--max-frame-bytes"), "{close:?}");
    Ok(())
}

#[tokio::test]
async fn a_dropped_socket_leaves_its_room() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (ann, _, ann_id) = peer_in_room(&server, "drop", "Ann").await?;
    let (mut bob, bob_channel, _) = peer_in_room(&server, "drop", "Bob").await?;
    wait_for_counts(&server, 1, 2).await?;

    // Gone without a leave or a close frame, as when a browser tab is killed.
    drop(ann);
    let (left_frame, left) = bob.next_media_event().await?;
    assert_push_on(&left_frame, &bob_channel);
    assert_eq!(left, ServerEvent::PeerLeft(PeerLeft { peer_id: ann_id }));
    wait_for_counts(&server, 1, 1).await?;

    let leave_ref = bob.next_ref();
    let leave = Frame::request(
        Some(bob_channel.join_ref.clone()),
        leave_ref,
        &bob_channel.topic,
        PhoenixEvent::Leave,
        json!({}),
    );
    assert_eq!(bob.request(&leave).await?, leave.reply_ok());
    wait_for_counts(&server, 0, 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_flooding_socket_is_closed_and_others_keep_working() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut flooder = PhoenixClient::connect(&server.socket_url()).await?;
    let (mut bystander, _, _) = peer_in_room(&server, "flood", "Bob").await?;

    const HEARTBEATS: usize = 1000;
    for _ in 0..HEARTBEATS {
        let msg_ref = flooder.next_ref();
        let heartbeat =
            Frame::request(None, msg_ref, "phoenix", PhoenixEvent::Heartbeat, json!({}));
        // The server may close the socket before the flood is over: stop sending then.
        if flooder.send(&heartbeat).await.is_err() {
            break;
        }
    }
    let close = flooder.expect_close().await?;
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    assert!(
        close.reason.contains("--max-events-per-second"),
        "{close:?}"
    );

    bystander.heartbeat().await?;
    bystander.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn frames_of_an_earlier_join_do_not_touch_the_current_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut ann, old_channel, _) = peer_in_room(&server, "stale", "Ann").await?;
    // Joining again closes the old channel.
    let new_channel = ann.join("room:stale").await?;
    assert_eq!(
        ann.recv().await?,
        Frame::close(&old_channel.join_ref, "room:stale")
    );
    // A media event still carrying the old join_ref is for a channel that is gone.
    let leave = ClientEvent::Leave.encode();
    let stale_push = raw_media_event(&old_channel, &ann.next_ref(), &leave);
    ann.send(&stale_push).await?;
    assert_eq!(error_reason(&ann.recv().await?)?, "unmatched topic");
    // A leave with the old join_ref is answered but leaves the current channel open.
    let stale_leave = Frame::request(
        Some(old_channel.join_ref.clone()),
        ann.next_ref(),
        "room:stale",
        PhoenixEvent::Leave,
        json!({}),
    );
    assert_eq!(ann.request(&stale_leave).await?, stale_leave.reply_ok());
    ann.expect_silence(QUIET).await?;
    // The current channel works: its media join is accepted.
    let accepted = ann.join_room(&new_channel, metadata_of("Ann")).await?;
    assert!(accepted.peers_in_room.is_empty(), "{accepted:?}");
    Ok(())
}

/// A page may open the socket from the server's own origin (or one listed with
/// `--allowed-origin`); another site's page, or a sandboxed one (`null`), gets a 403.
#[tokio::test]
async fn only_pages_of_allowed_origins_open_the_socket() -> anyhow::Result<()> {
    let mut config = server::Config::defaults();
    config.allowed_origins = vec!["https://app.example.com".to_owned()];
    let server = TestServer::start_with(config).await?;
    let url = server.socket_url();
    let own = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .map(|authority| format!("http://{authority}"))
        .expect("a ws:// URL");
    for origin in [own.as_str(), "https://app.example.com"] {
        let mut client = PhoenixClient::connect_with_headers(&url, &[("origin", origin)]).await?;
        client.heartbeat().await?;
    }
    for origin in ["https://evil.example", "null"] {
        let Err(refused) = PhoenixClient::connect_with_headers(&url, &[("origin", origin)]).await
        else {
            bail!("a page of {origin} opened the socket");
        };
        let refused = format!("{refused:#}");
        assert!(refused.contains("403"), "{origin}: {refused}");
    }
    Ok(())
}

/// With `--turn-secret`, each peer's `offerData` carries TURN credentials of its own: a username
/// naming when they expire and whose they are, and a password that differs per peer.
#[tokio::test]
async fn each_peer_gets_its_own_expiring_turn_credentials() -> anyhow::Result<()> {
    let mut config = server::Config::defaults();
    config.turn = vec![(
        "turn.example.org".to_owned(),
        3478,
        shared::server_event::TurnTransport::Udp,
    )];
    config.turn_secret = Some("north-wind".to_owned());
    config.turn_credential_ttl = Duration::from_secs(600);
    let server = TestServer::start_with(config).await?;
    let mut credentials = Vec::new();
    for name in ["Ann", "Bob"] {
        let mut client = PhoenixClient::connect(&server.socket_url()).await?;
        let channel = client.join("room:turn").await?;
        let accepted = client.join_room(&channel, metadata_of(name)).await?;
        client
            .push(&channel, &ClientEvent::RenegotiateTracks)
            .await?;
        let (_, ServerEvent::OfferData(offer_data)) = client.wait_for("offerData").await? else {
            bail!("no offerData for {name}");
        };
        // The embedded server's UDP and TCP entries, then the one of --turn, all with the
        // credentials of the one secret.
        let [embedded_udp, embedded_tcp, turn] = offer_data.integrated_turn_servers.as_slice()
        else {
            bail!("{name} got {:?}", offer_data.integrated_turn_servers);
        };
        assert_eq!(turn.server_addr, "turn.example.org");
        assert_eq!(embedded_udp.server_port, embedded_tcp.server_port);
        for embedded in [embedded_udp, embedded_tcp] {
            assert_eq!(embedded.server_addr, "127.0.0.1");
            assert_eq!(
                (&embedded.username, &embedded.password),
                (&turn.username, &turn.password)
            );
        }
        let (expiry, owner) = turn
            .username
            .split_once(':')
            .expect("an EXPIRY:PEER_ID username");
        let expiry: u64 = expiry.parse()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        assert!(
            (now + 590..=now + 610).contains(&expiry),
            "{name}: {expiry} vs {now}"
        );
        assert_eq!(owner, accepted.id.to_string());
        credentials.push(turn.password.clone());
    }
    assert_ne!(credentials[0], credentials[1]);
    Ok(())
}

/// With `--join-secret`, a room's channel opens only with a valid join token for that room, in
/// the socket's `token` parameter; the token's name is the one the others see.
#[tokio::test]
async fn with_a_join_secret_only_a_valid_token_for_the_room_joins() -> anyhow::Result<()> {
    use server::access::JoinSecret;
    use std::time::SystemTime;

    let mut config = server::Config::defaults();
    config.join_secret = Some("north-wind".to_owned());
    let server = TestServer::start_with(config).await?;
    let secret = JoinSecret::new("north-wind");
    let vault = shared::RoomId::new("vault")?;
    let hour = Duration::from_secs(3600);
    let with_token = |token: &str| format!("{}&token={token}", server.socket_url());

    let refusals = [
        (server.socket_url(), "needs a join token"),
        (
            with_token(&secret.issue(
                &shared::RoomId::new("lobby")?,
                "Ann",
                hour,
                SystemTime::now(),
            )),
            "is for room `lobby`",
        ),
        (
            with_token(&secret.issue(&vault, "Ann", hour, SystemTime::now() - 2 * hour)),
            "has expired",
        ),
        (
            with_token(&JoinSecret::new("guess").issue(&vault, "Mallory", hour, SystemTime::now())),
            "not valid",
        ),
    ];
    for (url, reason) in refusals {
        let mut client = PhoenixClient::connect(&url).await?;
        let Err(refused) = client.join(&vault.topic()).await else {
            bail!("joined without a valid token ({reason})");
        };
        let refused = format!("{refused:#}");
        assert!(refused.contains(reason), "wanted `{reason}`, got {refused}");
    }

    let token = secret.issue(&vault, "Ann", hour, SystemTime::now());
    let mut ann = PhoenixClient::connect(&with_token(&token)).await?;
    let channel = ann.join(&vault.topic()).await?;
    // Whatever name the page sends, the token's is the one used.
    ann.push(
        &channel,
        &ClientEvent::Join(Join {
            metadata: metadata_of("Somebody else"),
        }),
    )
    .await?;
    let (_, ServerEvent::PeerJoined(joined)) = ann.wait_for("peerJoined").await? else {
        bail!("no peerJoined");
    };
    assert_eq!(joined.peer.metadata, metadata_of("Ann"));
    Ok(())
}

/// Behind a trusted reverse proxy, `X-Forwarded-For` names the client whose sockets the
/// per-address limit counts; from anyone else the header is ignored.
#[tokio::test]
async fn a_trusted_proxys_forwarded_for_names_the_client() -> anyhow::Result<()> {
    /// Opens a socket from `client` and keeps it open in `held` if it was admitted.
    async fn open(url: &str, client: &str, held: &mut Vec<PhoenixClient>) -> anyhow::Result<bool> {
        let mut socket =
            PhoenixClient::connect_with_headers(url, &[("x-forwarded-for", client)]).await?;
        // A refused socket is closed at once, with the reason; an admitted one answers.
        let admitted = socket.heartbeat().await.is_ok();
        held.push(socket);
        Ok(admitted)
    }
    for trusted in [true, false] {
        let mut config = server::Config::defaults();
        config.limits.max_sockets_per_ip = 2;
        if trusted {
            config.trusted_proxies = vec!["127.0.0.1".parse()?];
        }
        let server = TestServer::start_with(config).await?;
        let url = server.socket_url();
        let mut held = Vec::new();
        let mut admitted = Vec::new();
        for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
            admitted.push(open(&url, client, &mut held).await?);
        }
        let mut same = Vec::new();
        for _ in 0..3 {
            same.push(open(&url, "203.0.113.9", &mut held).await?);
        }
        if trusted {
            assert_eq!(
                admitted,
                [true, true, true],
                "three clients behind the proxy"
            );
            assert_eq!(same, [true, true, false], "one client's third socket");
        } else {
            // Everyone is the test's own 127.0.0.1, which has its two sockets already.
            assert_eq!(admitted, [true, true, false], "the header was believed");
            assert_eq!(same, [false, false, false]);
        }
    }
    Ok(())
}
