//! HTTPS: the TLS side of the listener, when `--tls-cert`/`--tls-key` give a certificate (PEM)
//! or `--tls-self-signed` asks for one made at start (rcgen) for localhost, the listening and
//! announced addresses and `--tls-hostname` names. Browsers give the camera only to secure
//! pages, so a room on anything but localhost needs this (or a proxy that terminates TLS).
//!
//! A certificate from files is read again on SIGHUP and whenever the files change (checked
//! every [`RELOAD_CHECK`]), so a renewed certificate (Let's Encrypt every 60–90 days) is served
//! without a restart; new connections get it, open ones keep theirs. Files that cannot be read
//! or do not go together leave the current certificate in place, with an error in the log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use crate::Config;

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// What accepts TLS connections, if the configuration asks for TLS, and the certificate files
/// to watch, if it came from files.
pub fn acceptor(config: &Config) -> anyhow::Result<Option<(TlsAcceptor, Option<Arc<Reloadable>>)>> {
    let (certificates, reloadable): (Arc<dyn ResolvesServerCert>, _) =
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let reloadable = Arc::new(Reloadable::load(cert.clone(), key.clone())?);
                (reloadable.clone(), Some(reloadable))
            }
            _ if config.tls_self_signed => {
                let (certs, key) = self_signed(config)?;
                (Arc::new(Fixed(certified(certs, key)?)), None)
            }
            _ => return Ok(None),
        };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((TlsAcceptor::from(Arc::new(server)), reloadable)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A chain and key that go together.
fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = CertifiedKey::from_der(certs, key, &provider())
        .context("the certificate and key do not go together")?;
    Ok(Arc::new(key))
}

/// A certificate made at start, for the whole run.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A certificate from files, swapped for a new one when they change.
pub struct Reloadable {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' modification times as of the last load.
    loaded: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

fn read(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificates in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key in {}", key.display()))?;
    certified(certs, key)
}

impl Reloadable {
    fn load(cert: PathBuf, key: PathBuf) -> anyhow::Result<Reloadable> {
        let stamps = (modified(&cert), modified(&key));
        let current = read(&cert, &key)?;
        Ok(Reloadable {
            cert,
            key,
            current: ArcSwap::new(current),
            loaded: std::sync::Mutex::new(stamps),
        })
    }

    /// Reads the files again and serves what they hold from now on; on failure the current
    /// certificate stays.
    pub fn reload(&self, why: &str) {
        let stamps = (modified(&self.cert), modified(&self.key));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        match read(&self.cert, &self.key) {
            Ok(new) => {
                self.current.store(new);
                tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded");
            }
            Err(err) => {
                tracing::error!(cert = %self.cert.display(), why, "TLS certificate not reloaded, the current one stays: {err:#}");
            }
        }
    }

    /// Reloads if either file changed since the last load.
    pub fn reload_if_changed(&self) {
        let stamps = (modified(&self.cert), modified(&self.key));
        let changed = *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) != stamps;
        if changed {
            self.reload("the files changed");
        }
    }
}

/// Takes over SIGHUP from now on (before anything can send it: its default ends the process).
pub fn hangups() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|err| tracing::warn!(%err, "cannot watch SIGHUP"))
        .ok()
}

/// Follows the certificate files, if any, until the server stops: reloads them on SIGHUP and
/// when they change. Without files, SIGHUP is only logged (a `systemctl reload` must not stop
/// the server).
pub async fn follow(files: Option<Arc<Reloadable>>, mut hangups: Option<Signal>) {
    let mut check = tokio::time::interval(RELOAD_CHECK);
    loop {
        let hangup = async {
            match &mut hangups {
                Some(hangups) => hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(()) = hangup => match &files {
                Some(files) => files.reload("SIGHUP"),
                None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            },
            _ = check.tick() => {
                if let Some(files) = &files {
                    files.reload_if_changed();
                }
            }
        }
    }
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
