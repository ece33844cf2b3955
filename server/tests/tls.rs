//! HTTPS: with a certificate given as PEM files, and with one the server makes itself.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn start(config: server::Config) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(listener, config, std::future::pending()));
    port
}

/// `GET /health` over TLS to `localhost:port`, verified by `client`; the response text.
async fn health(port: u16, client: ClientConfig) -> std::io::Result<String> {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await?;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

fn trusting(cert: CertificateDer<'static>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn a_certificate_from_pem_files_serves_https() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("videoroom-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key): (PathBuf, PathBuf) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let port = start(server::Config {
        tls_cert: Some(cert),
        tls_key: Some(key),
        media_port: 0,
        turn_port: 0,
        turn_tls_port: 0,
        ..server::Config::defaults()
    })
    .await;
    let response = health(port, trusting(made.cert.der().clone()))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    // Plain HTTP to a TLS port gets no page.
    let mut plain = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

/// Accepts any certificate, keeping the one it was shown.
#[derive(Debug, Default)]
struct Shown(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Shown {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn a_self_signed_certificate_is_made_for_localhost() {
    let port = start(server::Config {
        tls_self_signed: true,
        media_port: 0,
        turn_port: 0,
        turn_tls_port: 0,
        ..server::Config::defaults()
    })
    .await;
    let shown = Arc::new(Shown::default());
    let anything = showing_to(shown.clone());
    let response = health(port, anything).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Trusted as a root, the certificate it showed verifies for `localhost`.
    let cert = shown
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("a certificate was shown");
    let response = health(port, trusting(cert)).await.unwrap();
    assert!(response.ends_with("ok"), "{response}");
}

/// A client that takes any certificate, and keeps the one it was shown in `shown`.
fn showing_to(shown: Arc<Shown>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(shown)
        .with_no_client_auth()
}

/// With HTTPS on, the embedded TURN server is also served over TLS on `--turn-tls-port`, to a
/// client that asks for TURN's ALPN protocol (not HTTP's): it challenges an anonymous
/// Allocate and grants one signed with credentials from the TURN secret.
#[tokio::test]
async fn turn_is_served_over_tls_beside_https() {
    use server::turn::credentials::Secret;
    use server::turn::stun::{self, attr, method, Class, Message, Writer};

    let turn_tls_port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    start(server::Config {
        tls_self_signed: true,
        media_port: 0,
        turn_port: 0,
        turn_tls_port,
        turn_secret: Some("north-wind".to_owned()),
        ..server::Config::defaults()
    })
    .await;
    let mut client = showing_to(Arc::default());
    client.alpn_protocols = vec![b"stun.turn".to_vec()];
    let tcp = connect_soon(turn_tls_port).await;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with the TURN port");
    let (username, password) = Secret::new("north-wind").issue(
        "tls-peer",
        std::time::SystemTime::now() + std::time::Duration::from_secs(60),
    );
    let key = stun::long_term_key(&username, server::turn::REALM, &password);
    let mut nonce = String::new();
    for signed in [false, true] {
        let mut request = Vec::new();
        let mut writer = Writer::new(
            &mut request,
            method::ALLOCATE,
            Class::Request,
            [signed as u8; 12],
        );
        writer.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        if signed {
            writer
                .attribute(attr::USERNAME, username.as_bytes())
                .attribute(attr::REALM, server::turn::REALM.as_bytes())
                .attribute(attr::NONCE, nonce.as_bytes())
                .integrity(&key);
        }
        tls.write_all(&request).await.unwrap();
        let mut reply = vec![0u8; 20];
        tls.read_exact(&mut reply).await.unwrap();
        let length = usize::from(u16::from_be_bytes([reply[2], reply[3]]));
        reply.resize(20 + length, 0);
        tls.read_exact(&mut reply[20..]).await.unwrap();
        let reply = Message::parse(&reply).unwrap();
        if signed {
            assert_eq!(
                reply.class,
                Class::Success,
                "{:?}",
                reply.get(attr::ERROR_CODE)
            );
            assert!(reply.xor_address(attr::XOR_RELAYED_ADDRESS).is_some());
            assert!(reply.integrity_matches(&key));
        } else {
            assert_eq!(reply.class, Class::Error);
            assert_eq!(
                reply.get(attr::ERROR_CODE).map(|code| &code[2..4]),
                Some(&[4, 1][..])
            );
            nonce = reply.text(attr::NONCE).expect("a nonce").to_owned();
        }
    }
}

/// A connection to `port`, which a server just started may not be listening on yet.
async fn connect_soon(port: u16) -> TcpStream {
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            return stream;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("nothing listens on port {port}");
}

/// The certificate the server on `port` shows now.
async fn shown_certificate(port: u16) -> std::io::Result<CertificateDer<'static>> {
    let shown = Arc::new(Shown::default());
    let anything = showing_to(shown.clone());
    health(port, anything).await?;
    let cert = shown.0.lock().unwrap().clone();
    Ok(cert.expect("a certificate was shown"))
}

/// A new certificate for localhost in `dir` as `cert.pem` and `key.pem`, written beside and
/// renamed over (as certbot's deploy does), keeping the replaced files' modification times if
/// `keep_mtimes`; its DER form.
fn write_certificate(dir: &std::path::Path, keep_mtimes: bool) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let files = [
        ("cert.pem", made.cert.pem()),
        ("key.pem", made.signing_key.serialize_pem()),
    ];
    for (name, text) in files {
        let (path, staged) = (dir.join(name), dir.join(format!("{name}.new")));
        std::fs::write(&staged, text).unwrap();
        if keep_mtimes {
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            let file = std::fs::File::options().write(true).open(&staged).unwrap();
            file.set_modified(mtime).unwrap();
        }
        std::fs::rename(&staged, path).unwrap();
    }
    made.cert.der().clone()
}

/// Waits (generously) until the server on `port` shows `wanted`.
async fn wait_to_show(port: u16, wanted: &CertificateDer<'static>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if shown_certificate(port).await.ok().as_ref() == Some(wanted) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("videoroom-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn renewed_certificate_files_are_served_without_a_restart() {
    let dir = temp_dir("tls-renewed");
    let first = write_certificate(&dir, false);
    let port = start(server::Config {
        tls_cert: Some(dir.join("cert.pem")),
        tls_key: Some(dir.join("key.pem")),
        media_port: 0,
        turn_port: 0,
        turn_tls_port: 0,
        ..server::Config::defaults()
    })
    .await;
    assert_eq!(shown_certificate(port).await.unwrap(), first);
    // Files that do not hold a certificate leave the current one in place.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(server::TLS_RELOAD_CHECK * 2).await;
    assert_eq!(shown_certificate(port).await.unwrap(), first);
    let second = write_certificate(&dir, false);
    wait_to_show(port, &second).await;
}

/// The `videoroom` binary on a free port (media on free ports too) with `args`, and the port.
fn spawn_videoroom(args: &[&str]) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let process = tokio::process::Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args([
            "--port",
            &port.to_string(),
            "--media-port",
            "0",
            "--turn-port",
            "0",
            "--turn-tls-port",
            "0",
            "--log",
            "error",
        ])
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (process, port)
}

/// Sends SIGHUP to `process`.
fn hang_up(process: &tokio::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &process.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// SIGHUP reloads the files at once, even when their modification times did not change (so the
/// periodic check would not notice), and does not stop the server.
#[tokio::test]
async fn sighup_reloads_the_certificate_files() {
    let dir = temp_dir("tls-sighup");
    let first = write_certificate(&dir, false);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let (mut process, port) = spawn_videoroom(&["--tls-cert", &cert, "--tls-key", &key]);
    wait_to_show(port, &first).await;
    let second = write_certificate(&dir, true);
    hang_up(&process);
    wait_to_show(port, &second).await;
    assert!(
        process.try_wait().unwrap().is_none(),
        "SIGHUP stopped the server"
    );
}

/// Without certificate files there is nothing to reload, and SIGHUP (a `systemctl reload`) must
/// not stop the server.
#[tokio::test]
async fn sighup_without_certificate_files_leaves_the_server_running() {
    let (mut process, port) = spawn_videoroom(&[]);
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reqwest::get(&health).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    hang_up(&process);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        process.try_wait().unwrap().is_none(),
        "SIGHUP stopped the server"
    );
    assert!(reqwest::get(&health).await.unwrap().status().is_success());
}
