//! The vhost-user message relay between the frontend (QEMU) and the library: a gatekeeper for a
//! frontend that may be hostile, and the place that absorbs one QEMU ordering quirk.
//!
//! **Gatekeeper.** Every message, descriptor and memory region a frontend sends is peer input. The
//! relay reads each message whole (header, payload, and the descriptors that came with it, at most
//! [`MAX_FDS`]), checks it against what the protocol and these devices allow ([`Policy`]), and only
//! then forwards it to the `vhost`/`vhost-user-backend` library. A message it refuses ends the
//! connection (its descriptors are closed); the daemon then serves the next one. Checked here
//! because the library (vhost 0.18, vhost-user-backend 0.24, vm-memory 0.18) accepts them:
//!
//! - more descriptors per message than the protocol allows (8: one per memory region of
//!   SET_MEM_TABLE, one for the others); the library takes up to 32;
//! - SET_MEM_TABLE with more than 8 regions (the library takes 32), overlapping regions (in guest
//!   or VMM addresses), a region past the end of its file (vm-memory maps it; the first access
//!   would kill the daemon with SIGBUS; its `MappingPastEof` error is defined but never raised), a
//!   file that could shrink later (no `F_SEAL_SHRINK`, unless allowed), more memory than
//!   [`Policy::max_memory`];
//! - SET_PROTOCOL_FEATURES acking features the backend did not offer: the library records the
//!   frontend's value as is and then serves SET_LOG_BASE (an mmap of any size the frontend names),
//!   the INFLIGHT messages, ADD_MEM_REG (no slot limit) on that word alone;
//! - requests these devices do not implement (GPU_SET_SOCKET and SET_DEVICE_STATE_FD are served by
//!   the library without any feature check);
//! - a queue size that is not a power of two (the library passes it to virtio-queue, which logs and
//!   keeps the old size, so device and driver disagree about the ring), a 32-bit ring base (the
//!   library truncates it to 16 bits), ring addresses outside the memory table or misaligned
//!   (virtio-queue logs and keeps the old address), a ring index beyond the device's queues;
//! - kick, call and error descriptors that are not eventfds: a pipe as the call descriptor would
//!   block the worker thread in `write` once full, and with it the daemon's shutdown. They are
//!   also switched to non-blocking (QEMU's already are), so a call eventfd whose counter the VMM
//!   filled cannot block the worker either.
//!
//! Upstream: each of these is worth a check in rust-vmm's `vhost` (`set_mem_table`, the protocol
//! feature mask, per-request fd counts) or `vm-memory` (`MappingPastEof`).
//!
//! **Quirk.** QEMU (checked with 10.0) sends `SET_VRING_ENABLE` for a vhost-user netdev while
//! attaching it to the virtio-net device, before the first `SET_FEATURES`. The `vhost` crate (0.18)
//! and `vhost-user-backend` (0.24) refuse `SET_VRING_ENABLE` until `VHOST_USER_F_PROTOCOL_FEATURES`
//! has been acked through `SET_FEATURES`, and end the connection; without that feature QEMU refuses
//! to start the device at all. The relay answers such early `SET_VRING_ENABLE`s itself (success, if
//! a reply was asked for), remembers the last state asked for each ring, and replays those right
//! after forwarding `SET_FEATURES` (without asking for replies): QEMU does not enable the rings again
//! when it starts the device.
//!
//! Layout: [`gate`] holds what a frontend may do ([`Policy`]) and the checks of every message
//! ([`Gate`]); `wire` reads and writes whole messages with their descriptors; [`error`] says why a
//! message was refused ([`Refused`]) or a relay ended ([`RelayError`]); here the relay itself:
//! the forwarding loop, the early `SET_VRING_ENABLE` quirk, the reply thread.

pub mod error;
pub mod gate;
mod wire;

#[cfg(any(test, feature = "test-utils"))]
pub use wire::{mem_table_payload, send_any_fds};

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{FrontendReq, MAX_MSG_SIZE};

pub use error::{Refused, RelayError};
pub use gate::{Gate, Policy};
use wire::{recv_exact, send_with_fds, u32_at};

const HDR_LEN: usize = 12;
const FLAG_VERSION_MASK: u32 = 0x3;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload the protocol carries (the library's `MAX_MSG_SIZE`, 4 KiB: SET_MEM_TABLE with 8
/// regions is 8 + 8 * 32 bytes, config space messages up to 256 bytes).
const MAX_PAYLOAD: usize = MAX_MSG_SIZE;
/// Most descriptors one message may carry: SET_MEM_TABLE's regions, one descriptor each, at most 8
/// (`VHOST_MEMORY_BASELINE_NREGIONS` in the vhost-user specification); every other message carries
/// at most one. rust-vmm's `vhost` allows 32 (`MAX_ATTACHED_FD_ENTRIES`).
pub const MAX_FDS: usize = 8;
/// Most regions of one SET_MEM_TABLE.
pub const MAX_REGIONS: usize = MAX_FDS;
/// Default of [`Policy::max_memory`]: 1 TiB.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 40;
/// Bit 8 of the SET_VRING_KICK/CALL/ERR payload: no descriptor (polling).
const VRING_NOFD: u64 = 0x100;

/// Relays frontend-to-backend messages until either side closes or a message is refused.
fn frontend_to_backend(
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<UnixStream>,
    gate: &mut Gate,
) -> Result<(), RelayError> {
    let mut features_seen = false;
    // Early SET_VRING_ENABLE messages, the last one per ring index (so at most one per queue), in
    // arrival order.
    let mut early: Vec<[u8; HDR_LEN + 8]> = Vec::new();
    loop {
        let mut hdr = [0u8; HDR_LEN];
        let mut fds = Vec::new();
        if !recv_exact(front, &mut hdr, &mut fds)? {
            return Ok(());
        }
        let (req, flags, size) = (u32_at(&hdr, 0), u32_at(&hdr, 4), u32_at(&hdr, 8) as usize);
        if size > MAX_PAYLOAD {
            return Err(Refused::Oversized { req, size }.into());
        }
        let mut msg = [0u8; HDR_LEN + MAX_PAYLOAD];
        msg[..HDR_LEN].copy_from_slice(&hdr);
        let msg = &mut msg[..HDR_LEN + size];
        if size > 0 && !recv_exact(front, &mut msg[HDR_LEN..], &mut fds)? {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let request = gate.check(req, flags, &msg[HDR_LEN..], &fds)?;
        match request {
            FrontendReq::SET_FEATURES if !features_seen => {
                features_seen = true;
                send_with_fds(back, msg, &fds)?;
                for m in early.drain(..) {
                    send_with_fds(back, &m, &[])?;
                }
                continue;
            }
            FrontendReq::SET_VRING_ENABLE if !features_seen => {
                let mut m = [0u8; HDR_LEN + 8];
                m.copy_from_slice(msg);
                m[4..8].copy_from_slice(&(flags & !FLAG_NEED_REPLY).to_le_bytes());
                early.retain(|e| e[HDR_LEN..HDR_LEN + 4] != m[HDR_LEN..HDR_LEN + 4]);
                early.push(m);
                tracing::debug!(
                    ring = u32_at(&m, HDR_LEN),
                    enable = u32_at(&m, HDR_LEN + 4),
                    "vhost-user relay: SET_VRING_ENABLE before SET_FEATURES answered and held"
                );
                if flags & FLAG_NEED_REPLY != 0 {
                    let mut reply = [0u8; HDR_LEN + 8];
                    reply[0..4].copy_from_slice(&req.to_le_bytes());
                    reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
                    front_writer
                        .lock()
                        .expect("frontend writer lock")
                        .write_all(&reply)?;
                }
                continue;
            }
            _ => {}
        }
        send_with_fds(back, msg, &fds)?;
    }
}

/// Relays one connection: `front` is the frontend (QEMU), `back` the library's socket; `policy`
/// says what the frontend may do. Returns when either side closes or a frontend message is
/// refused; both are shut down then.
pub fn relay(front: UnixStream, back: UnixStream, policy: Policy) -> Result<(), RelayError> {
    let front_writer = Arc::new(Mutex::new(front.try_clone()?));
    let back_reader = back.try_clone()?;
    let fw = front_writer.clone();
    let replies = std::thread::Builder::new()
        .name("vhost-user relay".into())
        .spawn(move || -> io::Result<()> {
            // Backend-to-frontend traffic is replies without descriptors (these backends open no
            // backend-initiated channel); copy it in whole reads under the writer lock.
            let mut r = back_reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if fw
                    .lock()
                    .expect("frontend writer lock")
                    .write_all(&buf[..n])
                    .is_err()
                {
                    break;
                }
            }
            let _ = fw
                .lock()
                .expect("frontend writer lock")
                .shutdown(std::net::Shutdown::Both);
            Ok(())
        })?;
    let mut gate = Gate::new(policy);
    let r = frontend_to_backend(&front, &back, &front_writer, &mut gate);
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    r
}

#[cfg(test)]
mod tests;
