//! Shared pieces of the vhost-user tests: a memfd as guest memory and a driver-side split virtqueue.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use ::vhost::vhost_user::Frontend;
use ::vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: usize = 1 << 20;
pub const QSIZE: u16 = 16;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// The shared "guest memory": a memfd mapped in this process.
pub struct GuestMem {
    pub fd: OwnedFd,
    base: *mut u8,
}

impl GuestMem {
    pub fn new() -> Self {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"pvkit-test-guest".as_ptr(), 0) };
        assert!(raw >= 0, "memfd_create failed");
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain system call on our descriptor.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) }, 0);
        // SAFETY: a new shared mapping of the whole memfd; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        GuestMem {
            fd,
            base: base.cast(),
        }
    }

    pub fn va(&self, gpa: usize) -> u64 {
        self.base as u64 + gpa as u64
    }

    pub fn write(&self, gpa: usize, data: &[u8]) {
        assert!(gpa + data.len() <= MEM_SIZE);
        // SAFETY: in bounds of the mapping (asserted); the daemon only touches other bytes now.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.wrapping_add(gpa), data.len()) };
    }

    pub fn read(&self, gpa: usize, len: usize) -> Vec<u8> {
        assert!(gpa + len <= MEM_SIZE);
        let mut v = vec![0; len];
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { std::ptr::copy_nonoverlapping(self.base.wrapping_add(gpa), v.as_mut_ptr(), len) };
        v
    }

    pub fn u16_at(&self, gpa: usize) -> u16 {
        // SAFETY: in bounds, 2-byte aligned ring fields; volatile because the daemon writes them.
        unsafe { self.base.wrapping_add(gpa).cast::<u16>().read_volatile() }
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), MEM_SIZE) };
    }
}

/// A driver-side split virtqueue in `GuestMem`.
pub struct Queue<'a> {
    mem: &'a GuestMem,
    /// Guest addresses of the descriptor table, available ring and used ring.
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> Queue<'a> {
    /// A queue whose rings start at `base`: descriptors, then avail at +0x100, used at +0x200.
    pub fn new(mem: &'a GuestMem, base: usize) -> Self {
        Queue {
            mem,
            desc: base,
            avail: base + 0x100,
            used: base + 0x200,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Adds a chain of (gpa, len, device-writable) buffers; returns its head.
    pub fn add(&mut self, bufs: &[(usize, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QSIZE;
            let last = i == bufs.len() - 1;
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(addr as u64).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT } | if w { VIRTQ_DESC_F_WRITE } else { 0 };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&((idx + 1) % QSIZE).to_le_bytes());
            self.mem.write(self.desc + 16 * idx as usize, &d);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % QSIZE;
        let slot = self.avail + 4 + 2 * (self.avail_idx % QSIZE) as usize;
        self.mem.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        head
    }

    /// Publishes the added chains and kicks.
    pub fn kick(&self, kick: &EventFd) {
        // Release: the descriptors and ring entries above are visible to the device before the
        // index that hands them over.
        fence(Ordering::Release);
        self.mem.write(self.avail + 2, &self.avail_idx.to_le_bytes());
        kick.write(1).unwrap();
    }

    /// Waits for `n` more used entries; returns (id, len) of each.
    pub fn wait_used(&mut self, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.mem.u16_at(self.used + 2).wrapping_sub(self.used_seen) < n {
            assert!(
                Instant::now() < deadline,
                "device did not complete {n} requests in 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Acquire: the used entries and the data they cover were written before the index.
        fence(Ordering::Acquire);
        (0..n)
            .map(|_| {
                let e = self
                    .mem
                    .read(self.used + 4 + 8 * (self.used_seen % QSIZE) as usize, 8);
                self.used_seen = self.used_seen.wrapping_add(1);
                (
                    u32::from_le_bytes(e[0..4].try_into().unwrap()),
                    u32::from_le_bytes(e[4..8].try_into().unwrap()),
                )
            })
            .collect()
    }
}

/// The vring addresses of `q` for SET_VRING_ADDR.
pub fn vring_config(mem: &GuestMem, q: &Queue<'_>) -> VringConfigData {
    VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: mem.va(q.desc),
        used_ring_addr: mem.va(q.used),
        avail_ring_addr: mem.va(q.avail),
        log_addr: None,
    }
}

/// The memfd as the one memory region at guest address 0.
pub fn region(mem: &GuestMem) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.va(0),
        mmap_offset: 0,
        mmap_handle: mem.fd.as_raw_fd(),
    }
}

/// Connects to `sock`, retrying while the server starts.
pub fn connect_retry(sock: &Path, queues: u64) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Frontend::connect(sock, queues) {
            Ok(f) => return f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connecting to {}: {e}", sock.display()),
        }
    }
}
