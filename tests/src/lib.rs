//! Harness for the end-to-end tests: the real server on loopback, serving the client that
//! `scripts/build-client.sh` put in `dist/`, and headless Chromium (or Firefox) with a fake
//! camera and microphone, driven over WebDriver by chromedriver (or geckodriver).
//!
//! [`phoenix`] is a Phoenix Channels client for tests that talk to the signaling socket directly,
//! [`synthetic`] a WebRTC peer that publishes and counts media, and [`load`] runs many of those
//! for the benchmark (`src/bin/loadgen.rs`); [`throttle`] narrows a synthetic peer's downlink;
//! [`netns`] a real narrow link for a browser; [`process`] runs the server as a process of its own, whose CPU and memory can be read from
//! `/proc`.

pub mod https;
pub mod load;
pub mod netns;
pub mod phoenix;
pub mod process;
pub mod redis;
pub mod synthetic;
pub mod throttle;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::elements::Element;
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
    /// Serving HTTPS (with a certificate it made: see [`https`]).
    https: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// The server with its defaults (media on loopback, free ports), serving `dist/` if it was
    /// built.
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(server::Config::defaults()).await
    }

    /// The server serving the built client, which browser tests need.
    pub async fn with_client() -> anyhow::Result<TestServer> {
        Self::start_with(Self::client_config()?).await
    }

    /// The defaults, serving the built client.
    pub fn client_config() -> anyhow::Result<server::Config> {
        let static_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist");
        if !static_dir.join("index.html").is_file() {
            bail!(
                "{}/index.html is missing: run scripts/test.sh, which builds the client first",
                static_dir.display()
            );
        }
        Ok(server::Config {
            static_dir: Some(static_dir),
            tls_self_signed: https::over_https(),
            ..server::Config::defaults()
        })
    }

    /// `config`'s server on a free port, its media workers on free UDP ports (tests run many
    /// servers at once).
    pub async fn start_with(config: server::Config) -> anyhow::Result<TestServer> {
        Self::listening_on(IpAddr::V4(Ipv4Addr::LOCALHOST), config).await
    }

    /// `config`'s server listening on `ip` (`0.0.0.0`: every address; its pages are still
    /// opened on loopback unless [`TestServer::url_at`] says otherwise).
    pub async fn listening_on(ip: IpAddr, config: server::Config) -> anyhow::Result<TestServer> {
        let config = server::Config {
            media_port: 0,
            turn_port: 0,
            turn_tls_port: 0,
            ..config
        };
        let https = config.tls_self_signed || config.tls_cert.is_some();
        let listener = TcpListener::bind((ip, 0)).await?;
        let mut address = listener.local_addr()?;
        if ip.is_unspecified() {
            address.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
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
            https,
            shutdown: Some(shutdown),
        })
    }

    /// The address of a page, as a browser opens it.
    pub fn url(&self, path: &str) -> String {
        if self.https {
            format!(
                "https://{}:{}{path}",
                https::TEST_HOSTNAME,
                self.address.port()
            )
        } else {
            format!("http://{}{path}", self.address)
        }
    }

    /// The address of a page at `ip` (the server listens on every address), over HTTP.
    pub fn url_at(&self, ip: IpAddr, path: &str) -> String {
        format!("http://{}{path}", SocketAddr::new(ip, self.address.port()))
    }

    /// The Phoenix socket's address, as phoenix.js builds it.
    pub fn socket_url(&self) -> String {
        let scheme = if self.https { "wss" } else { "ws" };
        format!("{scheme}://{}/socket/websocket?vsn=2.0.0", self.address)
    }

    /// What `/stats` says: rooms, peers and peer connections alive now.
    pub async fn counts(&self) -> anyhow::Result<server::Counts> {
        if self.https {
            Ok(serde_json::from_str(
                &https::get(self.address, "/stats").await?,
            )?)
        } else {
            process::counts(&format!("http://{}", self.address)).await
        }
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
    /// chromedriver's address, for the commands fantoccini does not have.
    driver_address: SocketAddr,
    /// Firefox, whose driver has no console log to give.
    firefox: bool,
}

/// How [`Browser::launch_with`] sets Chromium up; the default is [`Browser::launch`]'s.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Camera and microphone refused: without `--use-fake-ui-for-media-stream` and with
    /// `--deny-permission-prompts`, `getUserMedia` fails at once with `NotAllowedError`.
    /// (Chromium 156 headless: dropping the fake-UI flag alone already denies; blocking them in
    /// `goog:chromeOptions.prefs` does nothing while the fake-UI flag is there.)
    pub deny_media: bool,
    /// A made-up host name the browser resolves to 127.0.0.1, trusting any certificate: pages
    /// of a non-localhost secure origin (`https://NAME:PORT`) from a self-signed test server.
    pub test_hostname: Option<&'static str>,
    /// Firefox ESR through geckodriver instead of Chromium, with Firefox's own network
    /// settings (fake camera and microphone by its prefs).
    pub firefox: bool,
    /// Chromium's microphone hears someone talking (a steady tone from a WAV file) instead of
    /// its fake device's short beeps.
    pub speaking: bool,
    /// Chromium (and its chromedriver) run in this network namespace ([`netns`]), and treat
    /// the server's page there, `http://HOST_IP:PORT` (given), as a secure origin.
    pub netns: Option<(netns::Placement, String)>,
}

impl Default for LaunchOptions {
    /// Camera and microphone allowed; on the HTTPS run, pages opened by [`https::TEST_HOSTNAME`].
    fn default() -> LaunchOptions {
        LaunchOptions {
            deny_media: false,
            test_hostname: https::over_https().then_some(https::TEST_HOSTNAME),
            firefox: false,
            speaking: false,
            netns: None,
        }
    }
}

impl Browser {
    /// Launches Chromium with a fake camera and microphone that it may use without asking.
    pub async fn launch() -> anyhow::Result<Browser> {
        Self::launch_with(LaunchOptions::default()).await
    }

    /// Launches Chromium (or Firefox) as `options` say (see [`LaunchOptions`]).
    pub async fn launch_with(options: LaunchOptions) -> anyhow::Result<Browser> {
        let port = free_port()?;
        let (driver, capabilities) = if options.firefox {
            let driver = Command::new("geckodriver")
                .args(["--port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start geckodriver (scripts/test.sh installs it)")?;
            (driver, firefox_capabilities(&options))
        } else {
            let mut driver = match &options.netns {
                Some((placement, _)) => {
                    let mut command = Command::new("ip");
                    command.args(["netns", "exec", &placement.namespace, "chromedriver"]);
                    // Listening beyond loopback, for this test process on the host end.
                    command.arg(format!("--allowed-ips={}", placement.host_ip));
                    command
                }
                None => Command::new("chromedriver"),
            };
            let driver = driver
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start chromedriver (scripts/test.sh installs it)")?;
            (driver, chrome_capabilities(&options))
        };
        let driver_ip = match &options.netns {
            Some((placement, _)) => IpAddr::V4(placement.inner_ip),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let driver_address = SocketAddr::new(driver_ip, port);
        let client = connect(driver_address, capabilities).await?;
        Ok(Browser {
            client,
            driver,
            driver_address,
            firefox: options.firefox,
        })
    }

    /// Launches a stock Firefox ESR with a fake camera and microphone.
    pub async fn launch_firefox() -> anyhow::Result<Browser> {
        Self::launch_with(LaunchOptions {
            firefox: true,
            ..LaunchOptions::default()
        })
        .await
    }

    /// Waits for the element matching `css` to appear.
    pub async fn element(&self, css: &str) -> anyhow::Result<Element> {
        self.client
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("`{css}` did not appear"))
    }

    /// Waits for the element matching `css` to appear, and returns its text.
    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.element(css).await?.text().await?)
    }

    /// Replaces the text of the input matching `css`.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let input = self.element(css).await?;
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
        let condition = format!("location.pathname === {}", Value::from(path));
        self.wait_for(&format!("the page at {path}"), &condition, UI_TIMEOUT)
            .await
            .map(drop)
    }

    /// Runs `script` as the body of a function in the page and returns what it returns; a
    /// returned promise is awaited (`return pc.getStats().then(...)`). `arguments[0]`... are
    /// `args`.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client
            .execute(script, args)
            .await
            .with_context(|| format!("the page failed to run `{}`", one_line(script)))
    }

    /// Evaluates the expression `condition` every 50 ms until it is truthy, and returns its value.
    /// Fails after `timeout`, telling what was awaited (`what`) and the last value seen.
    pub async fn wait_for(
        &self,
        what: &str,
        condition: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let script = format!("return ({condition});");
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(&script, vec![]).await?;
            if truthy(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not so after {timeout:?} (`{condition}` was {value})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// Waits until some element matches `css` (`present`) or none does (`!present`).
    pub async fn wait_for_presence(
        &self,
        css: &str,
        present: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if (self.count(css).await? > 0) == present {
                return Ok(());
            }
            if Instant::now() > deadline {
                let state = if present { "did not appear" } else { "stayed" };
                bail!("`{css}` {state} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&self, path: &str) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        std::fs::write(path, png).with_context(|| format!("cannot write {path}"))?;
        Ok(())
    }

    /// The page's console messages since the last call (chromedriver's `browser` log), one a
    /// line as `LEVEL message`.
    pub async fn console_log(&self) -> anyhow::Result<Vec<String>> {
        anyhow::ensure!(!self.firefox, "geckodriver gives no console log");
        let session = self
            .client
            .session_id()
            .await?
            .context("the browser has no session")?;
        let url = format!("http://{}/session/{session}/se/log", self.driver_address);
        let body = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"type":"browser"}"#)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let reply: Value = serde_json::from_str(&body)?;
        let entries = reply["value"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .map(|entry| {
                format!(
                    "{} {}",
                    entry["level"].as_str().unwrap_or("?"),
                    entry["message"].as_str().unwrap_or("")
                )
            })
            .collect())
    }

    /// For a failed test: saves a screenshot to `/tmp/<label>.png` and prints the page's URL,
    /// console and room markup. Never fails; what it cannot get it says so.
    pub async fn dump(&self, label: &str) {
        let path = format!("/tmp/{label}.png");
        match self.screenshot(&path).await {
            Ok(()) => eprintln!("[{label}] screenshot: {path}"),
            Err(err) => eprintln!("[{label}] no screenshot: {err:#}"),
        }
        match self.client.current_url().await {
            Ok(url) => eprintln!("[{label}] url: {url}"),
            Err(err) => eprintln!("[{label}] no url: {err:#}"),
        }
        match self.console_log().await {
            Ok(lines) => {
                eprintln!("[{label}] console ({} lines):", lines.len());
                for line in lines.iter().rev().take(40).rev() {
                    eprintln!("[{label}]   {line}");
                }
            }
            Err(err) => eprintln!("[{label}] no console: {err:#}"),
        }
        let markup = self
            .eval(
                "const main = document.querySelector('main'); return main ? main.outerHTML : document.body.outerHTML;",
                vec![],
            )
            .await;
        match markup {
            Ok(Value::String(html)) => eprintln!("[{label}] markup: {html}"),
            Ok(other) => eprintln!("[{label}] markup: {other}"),
            Err(err) => eprintln!("[{label}] no markup: {err:#}"),
        }
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.client.close().await?;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// The Chromium flags known to work headless on these machines (docs/toolchain.md), adjusted
/// to `options`.
fn chrome_capabilities(options: &LaunchOptions) -> Map<String, Value> {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        // Three fake cameras, to switch between. (The second sends Y16 depth frames, which
        // Chromium never encodes: tests switch to the third, MJPEG.)
        "--use-fake-device-for-media-stream=device-count=3",
        "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
    ];
    let mut chrome_options = json!({ "binary": "/usr/bin/chromium" });
    if options.deny_media {
        args.retain(|arg| *arg != "--use-fake-ui-for-media-stream");
        args.push("--deny-permission-prompts");
    }
    let audio_file;
    if options.speaking {
        audio_file = format!(
            "--use-file-for-fake-audio-capture={}",
            talking_wav().display()
        );
        args.push(&audio_file);
    }
    let secure_origin;
    if let Some((_, origin)) = &options.netns {
        secure_origin = format!("--unsafely-treat-insecure-origin-as-secure={origin}");
        args.push(&secure_origin);
    }
    let resolver_rule;
    if let Some(name) = options.test_hostname {
        resolver_rule = format!("--host-resolver-rules=MAP {name} 127.0.0.1");
        args.push(&resolver_rule);
        args.push("--ignore-certificate-errors");
    }
    chrome_options["args"] = json!(args);
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": chrome_options,
        // Keeps the page's console for `Browser::console_log`.
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// A WAV file of two seconds of a steady 220 Hz tone at −10 dBFS (16-bit mono, 48 kHz), which
/// Chromium loops as its microphone's sound: as loud and as long as someone talking.
fn talking_wav() -> std::path::PathBuf {
    const RATE: u32 = 48_000;
    let samples: Vec<i16> = (0..2 * RATE)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 220.0 * f64::from(n) / f64::from(RATE);
            (phase.sin() * 0.3 * f64::from(i16::MAX)) as i16
        })
        .collect();
    let data_len = u32::try_from(samples.len() * 2).expect("two seconds fit");
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // the format chunk's size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    let path = std::env::temp_dir().join(format!("videoroom-talking-{}.wav", std::process::id()));
    std::fs::write(&path, wav).expect("the temporary directory is writable");
    path
}

/// Connects to chromedriver at `address`, retrying while it starts up.
async fn connect(address: SocketAddr, capabilities: Map<String, Value>) -> anyhow::Result<Client> {
    let url = format!("http://{address}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities);
    loop {
        match builder.connect(&url).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() > deadline => {
                return Err(err).context("cannot open a browser session through its driver")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// JavaScript's truthiness, for values that came back over WebDriver.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A script shortened to one line, for error messages.
fn one_line(script: &str) -> String {
    let line = script.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Firefox headless with fake devices it may use without asking, and otherwise its defaults:
/// its network settings are the point of running it.
fn firefox_capabilities(options: &LaunchOptions) -> Map<String, Value> {
    let mut prefs = json!({
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": !options.deny_media,
        // Nothing to fetch on this closed network: no updates, telemetry or safe browsing.
        "app.update.enabled": false,
        "browser.safebrowsing.malware.enabled": false,
        "browser.safebrowsing.phishing.enabled": false,
        "datareporting.policy.dataSubmissionEnabled": false,
        "toolkit.telemetry.enabled": false,
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
    });
    if let Some(name) = options.test_hostname {
        // As Chromium's resolver rule: the test name is this machine.
        prefs["network.dns.localDomains"] = json!(name);
    }
    let capabilities = json!({
        "browserName": "firefox",
        "acceptInsecureCerts": options.test_hostname.is_some(),
        "moz:firefoxOptions": {
            "binary": "/usr/bin/firefox-esr",
            "args": ["-headless", "-width=1280", "-height=800"],
            "prefs": prefs,
        },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// A free port on loopback for a browser driver, not handed out before in this process.
fn free_port() -> anyhow::Result<u16> {
    // Two browsers launched at once could be given the same free port (it is free until a
    // driver binds it); a port is handed out once per test process.
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}
