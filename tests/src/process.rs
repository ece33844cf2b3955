//! The server as a process of its own, for the load generator, the attack suite and the shutdown
//! test: what they measure of it (CPU time, resident memory and its peak, open files, how it
//! exits) is read from `/proc` or its exit status, and would be muddled by the test's own work if
//! the server ran inside the test.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use tokio::process::{Child, Command};

/// A server process on a free loopback port, killed when dropped.
pub struct ServerProcess {
    pub pid: u32,
    pub port: u16,
    child: Child,
}

impl ServerProcess {
    /// The `videoroom` binary that cargo built beside the running one (a test's binary lives one
    /// directory deeper, in `deps/`).
    pub fn binary_beside_this_one() -> anyhow::Result<PathBuf> {
        let this = std::env::current_exe()?;
        let candidates = this
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join("videoroom"));
        for candidate in candidates {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        bail!(
            "no videoroom binary beside {} (cargo build -p server)",
            this.display()
        )
    }

    /// Starts `binary` with `args` (beside `--port`, `--log error` and free media and TURN
    /// ports, unless `args` set them) and waits until it answers `/health`.
    pub async fn spawn(binary: &Path, args: &[&str]) -> anyhow::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(binary);
        command.args(["--port", &port.to_string()]);
        if !args.contains(&"--log") {
            command.args(["--log", "error"]);
        }
        // Free ports: tests run many servers at once.
        for flag in ["--media-port", "--turn-port", "--turn-tls-port"] {
            if !args.contains(&flag) {
                command.args([flag, "0"]);
            }
        }
        let child = command
            .args(args)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let server = ServerProcess { pid, port, child };
        for _ in 0..200 {
            if reqwest::get(server.url("/health"))
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not answer on /health", binary.display())
    }

    /// Sends SIGTERM, as a service manager stops a service, and waits up to `within` for the
    /// process to exit; returns how it exited.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("cannot run kill")?;
        ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("the server still runs {within:?} after SIGTERM"))?
            .context("cannot wait for the server")
    }

    /// Kills the process at once (SIGKILL), as a machine failing would, and waits for it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill the server")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The Phoenix socket's address, as phoenix.js builds it.
    pub fn socket_url(&self) -> String {
        format!("ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0", self.port)
    }

    /// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self, field: &str) -> anyhow::Result<u64> {
        memory_of(self.pid, field)
    }

    /// Files the process has open now: sockets included.
    pub fn open_files(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }
}

/// A `kB` figure of `/proc/<pid>/status`, in bytes.
pub fn memory_of(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// What `/stats` at `base_url` says: rooms, peers and peer connections alive now.
pub async fn counts(base_url: &str) -> anyhow::Result<server::Counts> {
    Ok(serde_json::from_value(stats(base_url).await?)?)
}

/// All `/stats` at `base_url` says, the cluster's view included.
pub async fn stats(base_url: &str) -> anyhow::Result<serde_json::Value> {
    let body = reqwest::get(format!("{base_url}/stats"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(serde_json::from_str(&body)?)
}
