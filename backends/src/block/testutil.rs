//! Test helpers for the block path: data patterns, temporary images, and a disk model with a
//! volatile cache.

use std::sync::Mutex;

use super::{BlockCore, SECTOR_SIZE, Storage};

pub(crate) fn pattern(sector: u64, seed: u8, sectors: usize) -> Vec<u8> {
    (0..sectors * SECTOR_SIZE as usize)
        .map(|i| (sector as usize * 7 + i * 13 + seed as usize) as u8)
        .collect()
}

pub(crate) fn image(sectors: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    f
}

/// A disk with a volatile cache: writes land in `cache`, `sync_data` copies it to `durable`.
pub(crate) struct CachedDisk {
    cache: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
}

impl CachedDisk {
    pub(crate) fn new(len: usize) -> Self {
        CachedDisk {
            cache: Mutex::new(vec![0; len]),
            durable: Mutex::new(vec![0; len]),
        }
    }
}

impl Storage for CachedDisk {
    fn len(&self) -> u64 {
        self.cache.lock().unwrap().len() as u64
    }
    unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        let c = self.cache.lock().unwrap();
        let mut at = offset as usize;
        for v in iov.iter() {
            // SAFETY: caller contract: writable for its length.
            unsafe { std::ptr::copy_nonoverlapping(c[at..].as_ptr(), v.iov_base.cast(), v.iov_len) };
            at += v.iov_len;
        }
        Ok(())
    }
    unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        let mut c = self.cache.lock().unwrap();
        let mut at = offset as usize;
        for v in iov.iter() {
            // SAFETY: caller contract: readable for its length.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), c[at..].as_mut_ptr(), v.iov_len)
            };
            at += v.iov_len;
        }
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let c = self.cache.lock().unwrap().clone();
        *self.durable.lock().unwrap() = c;
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut c = self.cache.lock().unwrap();
        c[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

pub(crate) fn durable_range(core: &BlockCore<CachedDisk>, sector: u64, sectors: usize) -> Vec<u8> {
    let d = core.storage().durable.lock().unwrap();
    let s = sector as usize * 512;
    d[s..s + sectors * 512].to_vec()
}
