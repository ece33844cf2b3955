//! Chat, our extension of the protocol (`chatMessage` both ways, `chatHistory` to joiners): a
//! message reaches everyone in its room (its sender too) in one order, named and timed by the
//! server; a late joiner gets the last messages; blank, long and too frequent messages get a
//! clear error reply and reach no one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure};
use e2e::phoenix::{error_reason, Channel, PhoenixClient};
use e2e::TestServer;
use serde_json::json;
use shared::client_event::ChatText;
use shared::server_event::ChatMessage;
use shared::{ClientEvent, Frame, PeerId, ServerEvent};

/// How long a socket must stay quiet to count as sent nothing.
const QUIET: Duration = Duration::from_millis(300);

struct Member {
    client: PhoenixClient,
    channel: Channel,
    id: PeerId,
}

async fn join(server: &TestServer, room: &str, name: &str) -> anyhow::Result<Member> {
    let mut client = PhoenixClient::connect(&server.socket_url()).await?;
    let channel = client.join(&format!("room:{room}")).await?;
    let accepted = client
        .join_room(&channel, json!({ "displayName": name }))
        .await?;
    Ok(Member {
        client,
        channel,
        id: accepted.id,
    })
}

impl Member {
    fn chat(text: &str) -> ClientEvent {
        ClientEvent::ChatMessage(ChatText {
            text: text.to_owned(),
        })
    }

    /// Sends `text` (a message the server takes gets no reply).
    async fn say(&mut self, text: &str) -> anyhow::Result<()> {
        self.client.push(&self.channel, &Member::chat(text)).await?;
        Ok(())
    }

    /// Sends `text`, which must be refused, and returns the reason.
    async fn refused(&mut self, text: &str) -> anyhow::Result<String> {
        let msg_ref = self.client.next_ref();
        let push = Frame::media_event(
            Some(self.channel.join_ref.clone()),
            Some(msg_ref),
            &self.channel.topic,
            Member::chat(text).encode(),
        );
        error_reason(&self.client.request(&push).await?)
    }

    async fn next_chat(&mut self) -> anyhow::Result<ChatMessage> {
        match self.client.wait_for("chatMessage").await? {
            (_, ServerEvent::ChatMessage(message)) => Ok(message),
            (frame, _) => bail!("not a chat message: {}", frame.encode()),
        }
    }
}

#[tokio::test]
async fn messages_reach_the_whole_room_and_late_joiners_get_the_history() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut ann = join(&server, "standup", "Ann").await?;
    let mut bob = join(&server, "standup", "Bob").await?;
    let mut elsewhere = join(&server, "retro", "Eve").await?;

    let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    ann.say("Shall we start? 🙂").await?;
    let ann_id = ann.id.clone();
    for member in [&mut ann, &mut bob] {
        let message = member.next_chat().await?;
        ensure!(
            message.peer_id == ann_id
                && message.display_name == "Ann"
                && message.text == "Shall we start? 🙂",
            "{message:?}"
        );
        let after = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        ensure!(
            (before..=after).contains(&message.sent_at),
            "sent at {}",
            message.sent_at
        );
    }
    bob.say("Yes, go ahead").await?;
    ensure!(ann.next_chat().await?.text == "Yes, go ahead");
    ensure!(bob.next_chat().await?.text == "Yes, go ahead");
    // Another room hears nothing of it.
    elsewhere.client.expect_silence(QUIET).await?;

    let mut carol = join(&server, "standup", "Carol").await?;
    let history = match carol.client.wait_for("chatHistory").await? {
        (_, ServerEvent::ChatHistory(history)) => history.messages,
        (frame, _) => bail!("not the history: {}", frame.encode()),
    };
    let said: Vec<(&str, &str)> = history
        .iter()
        .map(|message| (message.display_name.as_str(), message.text.as_str()))
        .collect();
    ensure!(
        said == [("Ann", "Shall we start? 🙂"), ("Bob", "Yes, go ahead")],
        "Carol got {said:?}"
    );
    // A joiner of a room without messages gets no history.
    let mut dave = join(&server, "quiet", "Dave").await?;
    dave.client.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_room_keeps_only_its_last_messages() -> anyhow::Result<()> {
    let mut config = server::Config::defaults();
    config.limits.chat_history = 3;
    let server = TestServer::start_with(config).await?;
    let mut ann = join(&server, "short", "Ann").await?;
    for n in 1..=5 {
        ann.say(&format!("message {n}")).await?;
    }
    let mut bob = join(&server, "short", "Bob").await?;
    let texts = match bob.client.wait_for("chatHistory").await? {
        (_, ServerEvent::ChatHistory(history)) => history
            .messages
            .into_iter()
            .map(|message| message.text)
            .collect::<Vec<_>>(),
        (frame, _) => bail!("not the history: {}", frame.encode()),
    };
    ensure!(
        texts == ["message 3", "message 4", "message 5"],
        "{texts:?}"
    );
    Ok(())
}

#[tokio::test]
async fn blank_long_and_too_frequent_messages_are_refused_and_reach_no_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut ann = join(&server, "limits", "Ann").await?;
    let mut bob = join(&server, "limits", "Bob").await?;

    let blank = ann.refused("  \n ").await?;
    ensure!(blank.contains("blank chat message"), "{blank}");
    let long = ann.refused(&"x".repeat(2001)).await?;
    ensure!(long.contains("--max-chat-message-bytes"), "{long}");
    // Control characters count as the escapes they travel as.
    let escaped = ann.refused(&"\u{1}".repeat(400)).await?;
    ensure!(escaped.contains("--max-chat-message-bytes"), "{escaped}");
    bob.client.expect_silence(QUIET).await?;

    // Five at once pass; the sixth in the same moment is refused.
    for n in 1..=5 {
        ann.say(&format!("burst {n}")).await?;
    }
    let flood = ann.refused("one too many").await?;
    ensure!(flood.contains("--max-chat-messages-per-minute"), "{flood}");
    for n in 1..=5 {
        ensure!(bob.next_chat().await?.text == format!("burst {n}"));
    }
    bob.client.expect_silence(QUIET).await?;
    // Refusals do not end anyone's session.
    ann.client.heartbeat().await?;
    bob.client.heartbeat().await?;
    Ok(())
}
