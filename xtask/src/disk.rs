//! Raw disk images for the block scenarios, and host-side checks of what the guest left in them.
//!
//! Images are pre-filled with a host pattern (different from any the guest writes), so the check
//! after a run sees both that every sector the guest wrote holds its data and that nothing else was
//! touched (a write that landed at the wrong offset shows up either way).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pvkit_frontends::workload::blk::{IntegrityParams, fill_sector, integrity_extents};
use pvkit_frontends::workload::{crc32, mix};

pub const SECTOR: usize = ring_protocol::abi::SECTOR_SIZE;

/// One image file.
#[derive(Debug, Clone)]
pub struct DiskImage {
    pub path: PathBuf,
    pub sectors: u64,
    /// Seed of the host fill pattern.
    pub fill_seed: u64,
}

/// The host fill of `sector`: distinct per sector and seed, and never the guest's pattern.
pub fn host_fill(seed: u64, sector: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = mix(seed ^ 0x686f_7374_6669_6c6c ^ (sector << 9) ^ i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

impl DiskImage {
    /// Creates (or replaces) `path` with `sectors` sectors of the host pattern.
    pub fn create(path: &Path, sectors: u64, fill_seed: u64) -> Result<DiskImage> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let f = File::create(path).with_context(|| format!("creating disk image {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut buf = [0u8; SECTOR];
        for s in 0..sectors {
            host_fill(fill_seed, s, &mut buf);
            w.write_all(&buf)?;
        }
        w.flush()?;
        Ok(DiskImage {
            path: path.to_owned(),
            sectors,
            fill_seed,
        })
    }

    fn read_all(&self) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .with_context(|| format!("reading disk image {}", self.path.display()))?;
        let want = self.sectors * SECTOR as u64;
        if data.len() as u64 != want {
            bail!(
                "disk image {} is {} bytes after the run, it was created with {want}",
                self.path.display(),
                data.len()
            );
        }
        Ok(data)
    }

    /// Checks that every sector still holds the host fill (a disk whose writes had to fail).
    pub fn verify_unchanged(&self) -> Result<()> {
        let data = self.read_all()?;
        let mut want = [0u8; SECTOR];
        for (s, got) in data.chunks(SECTOR).enumerate() {
            host_fill(self.fill_seed, s as u64, &mut want);
            if got != want {
                bail!(
                    "sector {s} of {} changed although every write to it had to fail",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Checks the image after `blk-integrity` with `seed` and `extents`: the sectors of every
    /// extent the workload writes hold its pattern and, if `only_writer` (no other test wrote the
    /// disk in the same run), all others still the host fill.
    pub fn verify_integrity(&self, seed: u64, extents: usize, only_writer: bool) -> Result<IntegrityCheck> {
        let data = self.read_all()?;
        let params = IntegrityParams {
            seed,
            random_extents: extents,
            ..IntegrityParams::default()
        };
        let jobs = integrity_extents(self.sectors, &params)
            .map_err(|e| anyhow::anyhow!("extents for {} sectors: {e}", self.sectors))?;
        // The pattern's key mixes in a nonce the guest does not print; sector 0's first word is
        // mix(key) (sector 0 is always written first), so the key comes back through mix's inverse.
        let key = unmix(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")));
        let mut written = vec![false; self.sectors as usize];
        let mut want = [0u8; SECTOR];
        let mut crc_input = Vec::new();
        let mut sectors_written = 0u64;
        for j in &jobs {
            for s in j.sector..j.sector + u64::from(j.sectors) {
                let got = &data[s as usize * SECTOR..][..SECTOR];
                fill_sector(key, s, &mut want);
                if got != want {
                    let host = {
                        let mut h = [0u8; SECTOR];
                        host_fill(self.fill_seed, s, &mut h);
                        h == got
                    };
                    bail!(
                        "sector {s} of {} does not hold the guest's pattern (key {key:#x}){}",
                        self.path.display(),
                        if host {
                            ": it still holds the host fill, the write never reached the image"
                        } else {
                            ""
                        }
                    );
                }
                written[s as usize] = true;
                sectors_written += 1;
                crc_input.extend_from_slice(got);
            }
        }
        for (s, got) in data.chunks(SECTOR).enumerate() {
            if written[s] || !only_writer {
                continue;
            }
            host_fill(self.fill_seed, s as u64, &mut want);
            if got != want {
                bail!(
                    "sector {s} of {} was changed although the workload never writes it",
                    self.path.display()
                );
            }
        }
        Ok(IntegrityCheck {
            key,
            extents: jobs.len(),
            sectors_written,
            crc32: crc32(&crc_input),
        })
    }
}

/// What [`DiskImage::verify_integrity`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityCheck {
    pub key: u64,
    pub extents: usize,
    pub sectors_written: u64,
    /// CRC-32 of the written sectors in write order.
    pub crc32: u32,
}

/// The inverse of [`mix`] (splitmix64's finaliser is a bijection: xor-shifts and odd multipliers).
pub fn unmix(mut x: u64) -> u64 {
    fn unshift(y: u64, s: u32) -> u64 {
        let mut x = y;
        for _ in 0..64 / s + 1 {
            x = y ^ (x >> s);
        }
        x
    }
    fn inverse(a: u64) -> u64 {
        // Newton's iteration for the inverse modulo 2^64: each step doubles the correct low bits.
        let mut x = a;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        }
        x
    }
    x = unshift(x, 31);
    x = x.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
    x = unshift(x, 27);
    x = x.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
    x = unshift(x, 30);
    x.wrapping_sub(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_frontends::workload::Rng;

    #[test]
    fn unmix_inverts_the_workloads_mix() {
        let mut r = Rng::new(42);
        for x in [0, 1, u64::MAX]
            .into_iter()
            .chain((0..1000).map(|_| r.next_u64()))
        {
            assert_eq!(unmix(mix(x)), x);
        }
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("pvkit-xtask-disk-{}", std::process::id()))
            .join(name)
    }

    /// Writes what the guest's blk-integrity would write with `seed`, `extents` and `nonce`.
    fn guest_writes(img: &DiskImage, seed: u64, extents: usize, nonce: u64) {
        let p = IntegrityParams {
            seed,
            nonce,
            random_extents: extents,
            ..IntegrityParams::default()
        };
        let key = mix(seed ^ mix(nonce));
        let mut data = std::fs::read(&img.path).unwrap();
        for j in integrity_extents(img.sectors, &p).unwrap() {
            for s in j.sector..j.sector + u64::from(j.sectors) {
                fill_sector(key, s, &mut data[s as usize * SECTOR..][..SECTOR]);
            }
        }
        std::fs::write(&img.path, data).unwrap();
    }

    #[test]
    fn integrity_check_accepts_the_workloads_writes_only() {
        let img = DiskImage::create(&temp("a.img"), 4096, 7).unwrap();
        img.verify_unchanged().unwrap();
        assert!(img.verify_integrity(3, 16, true).is_err(), "nothing written yet");
        guest_writes(&img, 3, 16, 0x1234_5678);
        let c = img.verify_integrity(3, 16, true).unwrap();
        assert_eq!(c.key, mix(3 ^ mix(0x1234_5678)));
        assert!(c.sectors_written >= 256 + 16, "{c:?}");
        assert!(img.verify_unchanged().is_err());
        // Other parameters mean other extents.
        assert!(img.verify_integrity(4, 16, true).is_err());

        // One byte of a written sector flipped.
        let mut data = std::fs::read(&img.path).unwrap();
        data[100 * SECTOR + 17] ^= 1;
        std::fs::write(&img.path, &data).unwrap();
        let e = img.verify_integrity(3, 16, true).unwrap_err().to_string();
        assert!(e.contains("sector 100 "), "{e}");

        // A stray write outside every extent.
        let img = DiskImage::create(&temp("b.img"), 4096, 7).unwrap();
        guest_writes(&img, 3, 16, 1);
        let mut data = std::fs::read(&img.path).unwrap();
        data[4095 * SECTOR] ^= 0xff;
        std::fs::write(&img.path, &data).unwrap();
        let e = img.verify_integrity(3, 16, true).unwrap_err().to_string();
        assert!(e.contains("never writes it"), "{e}");

        // A truncated image.
        std::fs::write(&img.path, &data[..SECTOR]).unwrap();
        assert!(img.verify_integrity(3, 16, true).is_err());
    }
}
