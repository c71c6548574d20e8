//! `vhost-user-net`: guest ports of a small L2 switch, served to QEMU's vhost-user netdev.
//!
//! ```text
//! vhost-user-net --socket /tmp/vn.sock [--socket /tmp/vn2.sock] [--echo-peer]
//! qemu-system-x86_64 -machine q35,memory-backend=mem \
//!   -object memory-backend-memfd,id=mem,size=128M,share=on \
//!   -chardev socket,id=vn,path=/tmp/vn.sock -netdev vhost-user,id=n0,chardev=vn \
//!   -device virtio-net-pci,netdev=n0 ...
//! ```
//!
//! Each socket is one guest port; guests on different sockets reach each other through the switch.
//! Guest memory must be sealed against shrinking (memory-backend-memfd's default `seal=on`) unless
//! `--allow-unsealed-memory` is given. With `--echo-peer` the switch also has the host test port (MAC 02:00:00:00:00:01, IPv4 10.0.2.1 by
//! default): it sends pvkit echo frames back and answers ARP, ping and UDP echo (port 7).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use pvkit_backends::net::{EchoPeer, Mac, Switch};
use pvkit_backends::vhost::{self, net::NetConnections};

#[derive(Debug, Parser)]
#[command(version, about = "vhost-user-net daemon: guest ports on an L2 switch")]
struct Cli {
    /// Unix socket to listen on, one per guest port (repeatable).
    #[arg(long, required = true)]
    socket: Vec<PathBuf>,
    /// Attach the host test port (echo peer) to the switch.
    #[arg(long)]
    echo_peer: bool,
    /// The echo peer's MAC address.
    #[arg(long, default_value = "02:00:00:00:00:01", value_parser = parse_mac)]
    peer_mac: Mac,
    /// The echo peer's IPv4 address.
    #[arg(long, default_value = "10.0.2.1")]
    peer_ip: Ipv4Addr,
    /// Serve this many connections per socket, then exit (tests); default: forever.
    #[arg(long)]
    connections: Option<usize>,
    /// Accept guest memory that is not sealed against shrinking (QEMU's memory-backend-memfd is, by
    /// default): a VMM that shrank it would kill the daemon, and every guest's network with it.
    /// Only with trusted VMMs.
    #[arg(long)]
    allow_unsealed_memory: bool,
}

fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC '{s}' does not have 6 colon-separated bytes");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("MAC '{s}': byte '{p}'"))?;
    }
    Ok(mac)
}

fn main() {
    pvkit_backends::crash::install("vhost-user-net");
    pvkit_backends::vhost::init_logging();
    if let Err(e) = run() {
        eprintln!("vhost-user-net: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let switch = Switch::new();
    let peer = cli
        .echo_peer
        .then(|| EchoPeer::attach(&switch, cli.peer_mac, cli.peer_ip.octets()));
    if let Some(p) = &peer {
        tracing::info!(peer = ?p, "vhost-user-net: echo peer attached");
    }
    let first = cli.socket[0].clone();
    for s in &cli.socket[1..] {
        let _ = std::fs::remove_file(s);
    }
    vhost::on_shutdown_signal(&first, {
        let sockets = cli.socket.clone();
        move || {
            for s in &sockets {
                let _ = std::fs::remove_file(s);
            }
        }
    })?;
    let mut threads = Vec::new();
    for socket in cli.socket.clone() {
        let switch = switch.clone();
        // One log limit per socket: one guest's flood does not silence the others'.
        let options = vhost::ServeOptions {
            max_connections: cli.connections,
            allow_unsealed_memory: cli.allow_unsealed_memory,
            ..Default::default()
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("serve {}", socket.display()))
                .spawn(move || {
                    vhost::serve("vhost-user-net", &socket, NetConnections { switch }, &options)
                })?,
        );
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a serving thread panicked"))?
            .context("vhost-user-net")?;
    }
    if let Some(p) = peer {
        tracing::info!(stats = ?p.stats(), "vhost-user-net: echo peer done");
    }
    Ok(())
}
