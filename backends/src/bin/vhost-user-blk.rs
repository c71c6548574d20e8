//! `vhost-user-blk`: serves an image file to QEMU's `vhost-user-blk-pci` over a Unix socket.
//!
//! ```text
//! vhost-user-blk --socket /tmp/vu.sock --image disk.img [--read-only] [--queues N] [--workers N]
//! qemu-system-x86_64 -machine q35,memory-backend=mem \
//!   -object memory-backend-memfd,id=mem,size=128M,share=on \
//!   -chardev socket,id=vu,path=/tmp/vu.sock -device vhost-user-blk-pci,chardev=vu ...
//! ```
//!
//! After QEMU disconnects the daemon waits for the next connection. SIGINT/SIGTERM sync the image and
//! exit with status 0. Guest memory must be sealed against shrinking (memory-backend-memfd's default
//! `seal=on`) unless `--allow-unsealed-memory` is given.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use pvkit_backends::block::{BlockCore, BlockOptions, BlockQueue};
use pvkit_backends::vhost::{self, blk::BlkConnections};

#[derive(Debug, Parser)]
#[command(version, about = "vhost-user-blk daemon over an image file")]
struct Cli {
    /// Unix socket to listen on (a stale file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Raw image file (must exist; its size a multiple of 512).
    #[arg(long)]
    image: PathBuf,
    /// Refuse writes and advertise VIRTIO_BLK_F_RO.
    #[arg(long)]
    read_only: bool,
    /// Request queues offered (QEMU uses at most this many).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Worker threads executing requests; 0 executes on the vring threads.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Open the image with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// Sync every write before completing it (no volatile write cache).
    #[arg(long)]
    writethrough: bool,
    /// Serve this many connections, then exit (tests); default: forever.
    #[arg(long)]
    connections: Option<usize>,
    /// Accept guest memory that is not sealed against shrinking (QEMU's memory-backend-memfd is, by
    /// default): a VMM that shrank it would kill the daemon. Only with a trusted VMM.
    #[arg(long)]
    allow_unsealed_memory: bool,
}

fn main() {
    pvkit_backends::crash::install("vhost-user-blk");
    pvkit_backends::vhost::init_logging();
    if let Err(e) = run() {
        eprintln!("vhost-user-blk: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let options = BlockOptions {
        read_only: cli.read_only,
        direct: cli.direct,
        writethrough: cli.writethrough,
    };
    let core = Arc::new(BlockCore::open(&cli.image, options)?);
    tracing::info!(
        image = %cli.image.display(),
        sectors = core.capacity(),
        read_only = cli.read_only,
        queues = cli.queues,
        workers = cli.workers,
        "vhost-user-blk: image open"
    );
    let pool = (cli.workers > 0).then(|| Arc::new(BlockQueue::new(core.clone(), cli.workers, 1024)));
    let c2 = core.clone();
    vhost::on_shutdown_signal(&cli.socket, move || {
        if let Err(e) = c2.flush() {
            tracing::error!("vhost-user-blk: final sync failed: {e}");
        }
    })?;
    vhost::serve(
        "vhost-user-blk",
        &cli.socket,
        BlkConnections {
            core,
            pool,
            queues: usize::from(cli.queues),
        },
        &vhost::ServeOptions {
            max_connections: cli.connections,
            allow_unsealed_memory: cli.allow_unsealed_memory,
            ..Default::default()
        },
    )
    .context("vhost-user-blk")?;
    Ok(())
}
