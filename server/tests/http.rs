//! The HTTP side of the server: the client's pages, its assets with caching and compression,
//! and `/health`, served from a static directory made by the test, or from the client built
//! into the binary.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use reqwest::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::net::TcpListener;

const INDEX: &str = "<!DOCTYPE html><html><body>videoroom test page</body></html>";

/// A static directory with an index page and one hashed asset, unique to `name`.
fn static_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("videoroom-http-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), INDEX).unwrap();
    std::fs::write(
        dir.join("client-0123abcd.js"),
        "console.log('x');\n".repeat(200),
    )
    .unwrap();
    dir
}

async fn start(name: &str) -> String {
    let config = server::Config {
        static_dir: Some(static_dir(name)),
        media_port: 0,
        turn_port: 0,
        turn_tls_port: 0,
        ..server::Config::defaults()
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, config, std::future::pending()));
    base
}

#[tokio::test]
async fn pages_are_the_index_and_never_cached() {
    let base = start("pages").await;
    let http = reqwest::Client::new();
    for path in ["/", "/room/standup"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-cache", "{path}");
        assert!(response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(response.text().await.unwrap(), INDEX, "{path}");
    }
}

#[tokio::test]
async fn assets_are_cached_for_good_and_compressed() {
    let base = start("assets").await;
    let response = reqwest::Client::new()
        .get(format!("{base}/client-0123abcd.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
    let compressed = response.bytes().await.unwrap();
    assert!(compressed.len() < 200, "{} bytes", compressed.len());
}

#[tokio::test]
async fn missing_assets_and_unknown_pages_are_404() {
    let base = start("missing").await;
    for path in ["/client-missing.wasm", "/room", "/room/a/b"] {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn health_answers_ok() {
    let base = start("health").await;
    let response = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");
}

/// Without `--static-dir` the server serves the client built into it: `dist/` as the build saw
/// it (scripts/test.sh builds the client first; without it, the pages answer 404).
#[tokio::test]
async fn the_built_in_client_is_served_without_a_static_dir() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(
        listener,
        server::Config {
            media_port: 0,
            turn_port: 0,
            turn_tls_port: 0,
            ..server::Config::defaults()
        },
        std::future::pending(),
    ));
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist");
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{base}/room/standup"))
        .send()
        .await
        .unwrap();
    let Ok(index) = std::fs::read_to_string(dist.join("index.html")) else {
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        return;
    };
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
    assert_eq!(page.text().await.unwrap(), index);
    // The wasm the page loads, hashed name and all.
    let wasm = std::fs::read_dir(&dist)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.ends_with(".wasm"))
        .expect("dist/ holds the client's wasm");
    let asset = http.get(format!("{base}/{wasm}")).send().await.unwrap();
    assert_eq!(asset.status(), StatusCode::OK);
    assert_eq!(asset.headers()[CONTENT_TYPE], "application/wasm");
    assert!(asset.headers()[CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let missing = http
        .get(format!("{base}/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
