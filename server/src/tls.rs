//! HTTPS: the TLS side of the listener, when `--tls-cert`/`--tls-key` give a certificate (PEM)
//! or `--tls-self-signed` asks for one made at start (rcgen) for localhost, the listening and
//! announced addresses and `--tls-hostname` names. Browsers give the camera only to secure
//! pages, so a room on anything but localhost needs this (or a proxy that terminates TLS).

use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Config;

/// What accepts TLS connections, if the configuration asks for TLS.
pub fn acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    let (certs, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the certificates in {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the private key in {}", key.display()))?;
            (certs, key)
        }
        _ if config.tls_self_signed => self_signed(config)?,
        _ => return Ok(None),
    };
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and key do not go together")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// A certificate for this server's names, made now.
fn self_signed(
    config: &Config,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.push(config.host.clone());
    names.extend(config.announce_ip.map(|ip| ip.to_string()));
    if !config.media_ip.is_loopback() {
        names.push(config.media_ip.to_string());
    }
    names.extend(config.tls_hostnames.iter().cloned());
    names.retain(|name| name != "0.0.0.0" && name != "::");
    names.sort();
    names.dedup();
    let made =
        rcgen::generate_simple_self_signed(names.clone()).context("cannot make a certificate")?;
    tracing::info!(?names, "made a self-signed certificate");
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((vec![made.cert.der().clone()], key.into()))
}
