//! The PV console: the ring page from `start_info` (`console.domU.mfn`, `console.domU.evtchn`),
//! driven through `ring_protocol::byte_ring::console_guest`. In dom0 there is no ring; output goes to
//! Xen's own console through `console_io`.
//!
//! The ring is driven by `pvkit_frontends::xen::console::XenConsole` (the same `ConsoleDevice` the
//! workloads use). A writer that finds the ring full notifies the backend and yields until it made
//! room, for at most [`STALL_NS`]; after that the rest of the bytes are dropped (and counted), so a
//! dead console daemon slows the run down but never hangs it.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use pvkit_frontends::console::ConsoleDevice;
use pvkit_frontends::xen::console::XenConsole;
use ring_protocol::abi::console::XenconsInterface;
use ring_protocol::byte_ring::console_guest;

use pvkit_frontends::xen::evtchn::PortNotify;

use super::devices::KernelEvents;
use super::store::EvtchnNotify;

use crate::arch::x86_64::xen as hv;

/// How long a writer waits for room in a full ring.
pub const STALL_NS: u64 = 2_000_000_000;

/// The guest end of the console ring and its event channel.
#[derive(Debug)]
pub struct RingConsole {
    dev: XenConsole<EvtchnNotify>,
}

enum Backend {
    None,
    Hypervisor,
    Ring(RingConsole),
}

static CONSOLE: spin::Mutex<Backend> = spin::Mutex::new(Backend::None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sets up the console from `start_info`. Called by the PV entry before anything prints.
pub fn init() {
    let Some(s) = super::start() else { return };
    let backend = if super::is_initial_domain() {
        Backend::Hypervisor
    } else {
        let va = super::memory::mfn_to_virt(s.si.console_mfn);
        // SAFETY: the console page is a bootstrap element, mapped writable for the whole run and
        // shared only with the console backend (which lives outside this address space); this is its
        // only guest end.
        match unsafe { console_guest(NonNull::new(va as *mut XenconsInterface).expect("console page at 0")) }
        {
            Ok(ring) => Backend::Ring(RingConsole {
                dev: XenConsole::new(ring, PortNotify::new(KernelEvents, s.si.console_evtchn)),
            }),
            // Nothing to report to yet: try the hypervisor console (works on debug builds of Xen).
            Err(_) => Backend::Hypervisor,
        }
    };
    *CONSOLE.lock() = backend;
}

fn with_console<T>(f: impl FnOnce(&mut Backend) -> T) -> T {
    let mut guard = match CONSOLE.try_lock() {
        Some(g) => g,
        None => {
            // Only the fatal path (which bypasses the console lock) can get here while a print it
            // interrupted holds this lock. That print never resumes (fatal powers off).
            // SAFETY: single CPU; the holder is a stack frame below us that will not run again.
            unsafe { CONSOLE.force_unlock() };
            CONSOLE.lock()
        }
    };
    f(&mut guard)
}

/// Writes `bytes` to the console.
pub fn write(bytes: &[u8]) {
    with_console(|c| match c {
        Backend::None => {}
        Backend::Hypervisor => {
            let _ = hv::console_io_write(bytes);
        }
        Backend::Ring(r) => r.write_all(bytes),
    });
}

/// Waits (bounded) until the backend has consumed everything written.
pub fn flush() {
    with_console(|c| {
        if let Backend::Ring(r) = c {
            r.drain();
        }
    });
}

/// Bytes dropped because the ring stayed full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

impl RingConsole {
    fn write_all(&mut self, mut bytes: &[u8]) {
        let mut stalled_since: Option<u64> = None;
        while !bytes.is_empty() {
            match self.dev.write(bytes) {
                Ok(n) if n > 0 => {
                    bytes = &bytes[n..];
                    stalled_since = None;
                }
                Ok(_) => {
                    let _ = self.dev.poke();
                    let now = super::time::now_ns();
                    let since = *stalled_since.get_or_insert(now);
                    if now.saturating_sub(since) > STALL_NS || (now == 0 && since == 0 && spin_out()) {
                        DROPPED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        return;
                    }
                    hv::yield_cpu();
                }
                Err(_) => {
                    DROPPED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    fn drain(&mut self) {
        let start = super::time::now_ns();
        let mut spins = 0u64;
        while let Ok(false) = self.dev.drained() {
            let _ = self.dev.poke();
            spins += 1;
            let now = super::time::now_ns();
            if (now != 0 && now.saturating_sub(start) > STALL_NS) || spins > 200_000 {
                return;
            }
            hv::yield_cpu();
        }
    }
}

/// Reads console input (bytes typed at the domain's console) into `buf`; 0 if none is waiting or
/// there is no console ring.
pub fn read_input(buf: &mut [u8]) -> usize {
    with_console(|c| match c {
        Backend::Ring(r) => r.dev.read(buf).unwrap_or(0),
        _ => 0,
    })
}

/// Without a clock (before the shared page is mapped) a full ring is waited on for a bounded number
/// of yields.
fn spin_out() -> bool {
    static SPINS: AtomicU64 = AtomicU64::new(0);
    SPINS.fetch_add(1, Ordering::Relaxed) > 200_000
}

/// A secondary console (`device/console/<n>`) as a workload device.
pub type Secondary = pvkit_frontends::xen::console::SecondaryConsole<
    &'static pvkit_frontends::xen::grant::GrantTable,
    KernelEvents,
>;

/// Opens the `index`-th secondary console of this domain (in id order: `device/console/1` first).
pub fn open_secondary(index: usize, timeout_us: u64) -> Result<Secondary, alloc::string::String> {
    use pvkit_frontends::xen::xenbus;
    let platform = super::devices::platform()?;
    let w = super::store::XenWaiter {
        mode: pvkit_frontends::wait::WaitMode::Interrupt,
    };
    super::store::with(|xs| {
        let devs = xenbus::enumerate(xs, &w, "console").map_err(|e| alloc::format!("{e}"))?;
        let Some(dev) = devs.into_iter().nth(index) else {
            return Err(alloc::format!(
                "device xen-console absent (no console {index} in XenStore device/console)"
            ));
        };
        Secondary::connect(xs, &w, platform, dev, timeout_us).map_err(|e| alloc::format!("{e}"))
    })?
}
