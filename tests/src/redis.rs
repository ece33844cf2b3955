//! A Redis server of the test's own (Debian's `redis-server`, which `scripts/test.sh`
//! installs) on a free loopback port, without persistence, stopped when dropped: the shared
//! state of the cluster tests' nodes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub struct RedisServer {
    pub port: u16,
    _child: Child,
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start redis-server (Debian's redis-server package; scripts/test.sh \
                 installs it)",
            )?;
        let server = RedisServer {
            port,
            _child: child,
        };
        for _ in 0..100 {
            if server.ping().await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not answer on port {port}")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).await?;
        anyhow::ensure!(&answer == b"+PONG\r\n", "redis answered {answer:?}");
        Ok(())
    }
}
