//! Harness for the end-to-end tests: the real server on loopback, serving the client that
//! `trunk build` put in `dist/`, and headless Chromium with a fake camera and microphone, driven
//! over WebDriver by chromedriver.
//!
//! [`phoenix`] is a Phoenix Channels client for tests that talk to the signaling socket directly,
//! [`synthetic`] a WebRTC peer that publishes and counts media, and [`load`] runs many of those
//! for the benchmark (`src/bin/loadgen.rs`).

pub mod load;
pub mod phoenix;
pub mod synthetic;

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long a test waits for the page to show something before it fails.
pub const UI_TIMEOUT: Duration = Duration::from_secs(15);

/// The videoroom server, running in this process on an ephemeral loopback port.
pub struct TestServer {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// The server with its defaults (media on loopback), serving `dist/` if it was built.
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(server::Config::defaults()).await
    }

    /// The server serving the built client, which browser tests need.
    pub async fn with_client() -> anyhow::Result<TestServer> {
        let static_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist");
        if !static_dir.join("index.html").is_file() {
            bail!(
                "{}/index.html is missing: run scripts/test.sh, which builds the client first",
                static_dir.display()
            );
        }
        Self::start_with(server::Config {
            static_dir,
            ..server::Config::defaults()
        })
        .await
    }

    pub async fn start_with(config: server::Config) -> anyhow::Result<TestServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(err) = server::serve(listener, config, stopped).await {
                eprintln!("test server failed: {err:#}");
            }
        });
        Ok(TestServer {
            address,
            shutdown: Some(shutdown),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The Phoenix socket's address, as phoenix.js builds it.
    pub fn socket_url(&self) -> String {
        format!("ws://{}/socket/websocket?vsn=2.0.0", self.address)
    }

    /// What `/stats` says: rooms, peers and peer connections alive now.
    pub async fn counts(&self) -> anyhow::Result<server::Counts> {
        let body = reqwest::get(self.url("/stats"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// One headless Chromium with its own chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Launches Chromium with a fake camera and microphone that it may use without asking.
    pub async fn launch() -> anyhow::Result<Browser> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start chromedriver (scripts/test.sh installs it)")?;
        let client = connect(port).await?;
        Ok(Browser { client, driver })
    }

    /// Waits for the element matching `css` to appear, and returns its text.
    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        let element = self
            .client
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("`{css}` did not appear"))?;
        Ok(element.text().await?)
    }

    /// Replaces the text of the input matching `css`.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let input = self
            .client
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("`{css}` did not appear"))?;
        input.clear().await?;
        input.send_keys(text).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }

    /// The path of the page the browser shows.
    pub async fn path(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    /// Waits until the page's path is `path`.
    pub async fn wait_for_path(&self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            let current = self.path().await?;
            if current == path {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page stayed at {current}, expected {path}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.client.close().await?;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// The Chromium flags known to work headless on these machines (docs/toolchain.md).
fn chrome_capabilities() -> Map<String, Value> {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
    ];
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Connects to chromedriver on `port`, retrying while it starts up.
async fn connect(port: u16) -> anyhow::Result<Client> {
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(chrome_capabilities());
    loop {
        match builder.connect(&url).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() > deadline => {
                return Err(err).context("cannot open a Chromium session through chromedriver")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
