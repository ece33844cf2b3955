//! The browser suite over HTTPS: with `VIDEOROOM_TEST_HTTPS=1` (the test command's second run of
//! the browser tests) the test servers serve a certificate they make themselves
//! (`--tls-self-signed`), browsers open them as `https://videoroom.test:PORT` (a name Chromium
//! maps to 127.0.0.1, trusting any certificate: a secure origin that is not localhost), and the
//! tests' own clients speak TLS to them, taking any certificate.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The host name browsers open HTTPS test servers by.
pub const TEST_HOSTNAME: &str = "videoroom.test";

/// Whether this run is the one over HTTPS.
pub fn over_https() -> bool {
    std::env::var("VIDEOROOM_TEST_HTTPS").is_ok_and(|value| value == "1")
}

/// A TLS client that takes any certificate: the test servers' are self-signed.
pub fn accepting_any_certificate() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("rustls's default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    Arc::new(config)
}

/// `GET path` over TLS from the server at `address`, its body.
pub async fn get(address: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::IpAddress(address.ip().into());
    let mut tls = TlsConnector::from(accepting_any_certificate())
        .connect(name, tcp)
        .await
        .with_context(|| format!("no TLS handshake with {address}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("a response without a body")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
