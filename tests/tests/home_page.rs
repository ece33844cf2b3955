//! The home page in a real browser, served by the real server: pick a room and a name, join,
//! and come back to find them remembered; before joining, the camera preview, the microphone's
//! level and the device pickers.

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e::{Browser, TestServer};
use serde_json::json;

/// How long a condition in the page may take on a loaded machine.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

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

/// The home page shows the camera before joining and a level meter that moves with the fake
/// microphone's beeps; another camera picked there is remembered and is the one the call
/// sends: the very track of the preview, not a second opening of the camera.
#[tokio::test]
async fn the_preview_shows_camera_and_microphone_and_hands_them_to_the_call() -> anyhow::Result<()>
{
    let server = TestServer::with_client().await?;
    let browser = Browser::launch().await?;
    let outcome = async {
        browser.client.goto(&server.url("/")).await?;
        let preview_track = "document.getElementById('preview-video').srcObject.getVideoTracks()[0]";
        browser
            .wait_for(
                "the camera playing in the preview",
                "(() => { const v = document.getElementById('preview-video'); \
                   return v && v.videoWidth > 0 && v.currentTime > 0 && !v.paused; })()",
                PAGE_TIMEOUT,
            )
            .await?;
        let level = browser
            .wait_for(
                "the microphone level above silence",
                "(() => { const m = document.getElementById('mic-level'); \
                   return m && m.value > 0.02 && m.value; })()",
                PAGE_TIMEOUT,
            )
            .await?;
        println!("preview: microphone level seen {level}");

        browser
            .wait_for(
                "three cameras to pick from",
                "document.querySelectorAll('#preview-camera option').length === 3",
                PAGE_TIMEOUT,
            )
            .await?;
        let chosen = browser
            .eval(
                "const select = document.getElementById('preview-camera'); \
                 const other = [...select.options].find(o => o.textContent === 'fake_device_2'); \
                 select.value = other.value; \
                 select.dispatchEvent(new Event('change', { bubbles: true })); \
                 return other.value;",
                vec![],
            )
            .await?;
        browser
            .wait_for(
                "the picked camera in the preview",
                &format!("{preview_track}.label === 'fake_device_2' && {preview_track}.readyState === 'live'"),
                PAGE_TIMEOUT,
            )
            .await?;
        let remembered = browser
            .eval("return localStorage.getItem('videoroom.camera');", vec![])
            .await?;
        ensure!(
            remembered.as_str().map(|id| json!(id.trim_matches('"'))) == Some(chosen.clone()),
            "the camera {chosen} was not remembered: {remembered}"
        );

        // Marks the preview's track object, to find the same object on the call's sender.
        browser
            .eval(&format!("{preview_track}.previewMark = 'from the preview';"), vec![])
            .await?;
        browser.fill("#room-name", "preview").await?;
        browser.fill("#display-name", "Ann").await?;
        browser.click("#join").await?;
        browser.wait_for_path("/room/preview").await?;
        let sent = browser
            .wait_for(
                "the call sending a camera",
                "(() => { const pc = window.videoroomPeerConnection; \
                   const s = pc && pc.getSenders().find(s => s.track && s.track.kind === 'video'); \
                   return s && [s.track.label, s.track.previewMark || null]; })()",
                PAGE_TIMEOUT,
            )
            .await?;
        ensure!(
            sent == json!(["fake_device_2", "from the preview"]),
            "the call sends {sent}, not the preview's fake_device_2 track"
        );
        Ok(())
    }
    .await;
    if outcome.is_err() {
        browser.dump("preview").await;
    }
    let _ = browser.close().await;
    outcome.context("the preview before joining")
}
