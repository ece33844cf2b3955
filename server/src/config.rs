//! The server's configuration: command-line flags, each with an environment-variable fallback.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "videoroom",
    version,
    about = "A self-hosted multi-party video room"
)]
pub struct Config {
    /// Address to listen on for HTTP and the signaling socket.
    #[arg(long, env = "VIDEOROOM_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "VIDEOROOM_PORT", default_value_t = 4000)]
    pub port: u16,

    /// Directory holding the built web client (`trunk build --release` writes `dist/`).
    #[arg(long, env = "VIDEOROOM_STATIC_DIR", default_value = "dist")]
    pub static_dir: PathBuf,

    /// Log filter, e.g. `info` or `server=debug,info`.
    #[arg(long, env = "VIDEOROOM_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The defaults, as if no flag and no variable were given.
    pub fn defaults() -> Config {
        Config::parse_from(["videoroom"])
    }
}
