//! A real narrow link for browser tests: a network namespace joined to this one by a veth
//! pair. A browser placed in the namespace ([`crate::LaunchOptions::netns`]) reaches the server
//! at the host end's address; everything towards it leaves by the host end, whose queue
//! [`NarrowLink::narrow`] replaces with a `tc tbf` token bucket. Needs root (CI is root);
//! [`NarrowLink::create`] says why when it cannot be made, so the test can skip.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// Where a browser in the namespace runs: its name, its address, and the host end's address.
#[derive(Debug, Clone)]
pub struct Placement {
    pub namespace: String,
    pub inner_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
}

/// The namespace and its veth pair; dropped, both are gone.
#[derive(Debug)]
pub struct NarrowLink {
    placement: Placement,
    host_device: String,
}

impl NarrowLink {
    /// A namespace of this process's own, or why there can be none here.
    pub fn create() -> Result<NarrowLink, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: a network namespace needs CAP_NET_ADMIN".to_owned());
        }
        let id = std::process::id();
        let namespace = format!("videoroom{id}");
        let host_device = format!("vrh{}", id % 10_000_000);
        let inner_device = format!("vrn{}", id % 10_000_000);
        let subnet = (id % 250) as u8;
        let host_ip = Ipv4Addr::new(10, 213, subnet, 1);
        let inner_ip = Ipv4Addr::new(10, 213, subnet, 2);
        let link = NarrowLink {
            placement: Placement {
                namespace: namespace.clone(),
                inner_ip,
                host_ip,
            },
            host_device: host_device.clone(),
        };
        let inside = |args: &str| format!("netns exec {namespace} ip {args}");
        let steps = [
            format!("netns add {namespace}"),
            format!("link add {host_device} type veth peer name {inner_device}"),
            format!("link set {inner_device} netns {namespace}"),
            format!("addr add {host_ip}/24 dev {host_device}"),
            format!("link set {host_device} up"),
            inside(&format!("addr add {inner_ip}/24 dev {inner_device}")),
            inside(&format!("link set {inner_device} up")),
            inside("link set lo up"),
        ];
        for step in steps {
            run("ip", &step).map_err(|err| format!("cannot make the namespace: {err:#}"))?;
        }
        // The kernel must have the token bucket: try it once.
        link.narrow(10_000)
            .and_then(|()| link.widen())
            .map_err(|err| format!("no tc tbf here: {err:#}"))?;
        Ok(link)
    }

    pub fn placement(&self) -> Placement {
        self.placement.clone()
    }

    /// Everything towards the namespace passes at `kbit_per_second`, with at most 100 ms of
    /// queue (what does not fit is dropped), as a narrow access link would.
    pub fn narrow(&self, kbit_per_second: u32) -> anyhow::Result<()> {
        run(
            "tc",
            &format!(
                "qdisc replace dev {} root tbf rate {kbit_per_second}kbit burst 4kb latency 100ms",
                self.host_device
            ),
        )
    }

    /// The link is as wide as the machine again.
    pub fn widen(&self) -> anyhow::Result<()> {
        run("tc", &format!("qdisc del dev {} root", self.host_device))
    }
}

impl Drop for NarrowLink {
    fn drop(&mut self) {
        // The veth pair goes with the namespace its inner end is in.
        let _ = run("ip", &format!("netns del {}", self.placement.namespace));
    }
}

fn run(program: &str, args: &str) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args.split_whitespace())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {args}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
