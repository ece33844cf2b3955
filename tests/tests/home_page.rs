//! The home page in a real browser, served by the real server: pick a room and a name, join,
//! and come back to find them remembered.

use e2e::{Browser, TestServer};

#[tokio::test]
async fn joining_a_room_opens_its_page_and_remembers_the_choice() -> anyhow::Result<()> {
    let server = TestServer::with_client().await?;
    let browser = Browser::launch().await?;

    browser.client.goto(&server.url("/")).await?;
    assert_eq!(browser.text_of("h1").await?, "videoroom");

    browser.fill("#room-name", "bad room!").await?;
    browser.fill("#display-name", "Ann").await?;
    browser.click("#join").await?;
    let error = browser.text_of(".error").await?;
    assert!(error.starts_with("Room name:"), "unexpected error: {error}");
    assert_eq!(browser.path().await?, "/");

    browser.fill("#room-name", "standup").await?;
    browser.click("#join").await?;
    browser.wait_for_path("/room/standup").await?;
    assert_eq!(browser.text_of("#room-title").await?, "Room standup");

    // Opening the home page again shows the remembered room and name.
    browser.client.goto(&server.url("/")).await?;
    browser.text_of("#join-form").await?;
    let remembered = browser
        .client
        .execute(
            "return [document.getElementById('room-name').value, document.getElementById('display-name').value]",
            vec![],
        )
        .await?;
    assert_eq!(remembered, serde_json::json!(["standup", "Ann"]));

    browser.close().await
}

#[tokio::test]
async fn a_room_link_opens_the_room_page_directly() -> anyhow::Result<()> {
    let server = TestServer::with_client().await?;
    let browser = Browser::launch().await?;
    browser
        .client
        .goto(&server.url("/room/design-review"))
        .await?;
    assert_eq!(browser.text_of("#room-title").await?, "Room design-review");
    browser.close().await
}
