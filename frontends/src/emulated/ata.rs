//! ATA command-set facts shared by the IDE (PIO) and AHCI (DMA) drivers: command opcodes, the
//! taskfile a read or write needs (LBA28 or LBA48), and the IDENTIFY DEVICE data the drivers read
//! capacity and features from. Pure logic: no I/O, host-tested.

/// Bytes in one ATA logical sector (the drivers reject disks that report another size).
pub use ring_protocol::abi::SECTOR_SIZE;

/// ATA command opcodes (ACS-3).
pub mod cmd {
    /// READ SECTORS (PIO, LBA28).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT (PIO, LBA48).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS (PIO, LBA28).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT (PIO, LBA48).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// READ MULTIPLE (PIO, one interrupt per block of sectors, LBA28).
    pub const READ_MULTIPLE: u8 = 0xc4;
    /// READ MULTIPLE EXT (LBA48).
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE MULTIPLE (LBA28).
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    /// WRITE MULTIPLE EXT (LBA48).
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// SET MULTIPLE MODE: sectors per DRQ block in the count register.
    pub const SET_MULTIPLE: u8 = 0xc6;
    /// READ DMA (LBA28).
    pub const READ_DMA: u8 = 0xc8;
    /// READ DMA EXT (LBA48).
    pub const READ_DMA_EXT: u8 = 0x25;
    /// WRITE DMA (LBA28).
    pub const WRITE_DMA: u8 = 0xca;
    /// WRITE DMA EXT (LBA48).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// READ FPDMA QUEUED (NCQ).
    pub const READ_FPDMA_QUEUED: u8 = 0x60;
    /// WRITE FPDMA QUEUED (NCQ).
    pub const WRITE_FPDMA_QUEUED: u8 = 0x61;
    /// FLUSH CACHE (LBA28 devices).
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT (LBA48 devices).
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xec;
}

/// Status register bits.
pub mod status {
    /// Error: the error register says what.
    pub const ERR: u8 = 0x01;
    /// Data request: the device wants (or has) a data block.
    pub const DRQ: u8 = 0x08;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Busy: no other bit is valid.
    pub const BSY: u8 = 0x80;
}

/// Device register: LBA addressing.
pub const DEVICE_LBA: u8 = 0x40;
/// Device register bits 7 and 5, "obsolete, set to one" on parallel ATA.
pub const DEVICE_OBSOLETE: u8 = 0xa0;

/// Largest LBA28 address + 1.
pub const LBA28_LIMIT: u64 = 1 << 28;
/// Largest LBA48 address + 1.
pub const LBA48_LIMIT: u64 = 1 << 48;
/// Most sectors one LBA28 command moves (a count of 0 means 256).
pub const LBA28_MAX_SECTORS: u32 = 256;
/// Most sectors one LBA48 command moves (a count of 0 means 65536).
pub const LBA48_MAX_SECTORS: u32 = 65_536;

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
}

/// How data moves for a read or write command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Programmed I/O through the data register (IDE), one sector per data block.
    Pio,
    /// Programmed I/O in blocks of several sectors (after SET MULTIPLE MODE).
    PioMultiple,
    /// The controller's DMA engine (AHCI, non-queued).
    Dma,
    /// Native command queuing with this tag (0..32).
    Ncq(u8),
}

/// The register values of one ATA command ("taskfile"), independent of the transport. For LBA48
/// commands the high bytes of `count`, `features` and `lba` are the "previous" register contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskFile {
    /// Command opcode.
    pub command: u8,
    /// Features (16 bits for LBA48 / NCQ).
    pub features: u16,
    /// Sector count (16 bits for LBA48; the NCQ tag for queued commands).
    pub count: u16,
    /// LBA (48 bits).
    pub lba: u64,
    /// Device register (LBA bit, LBA28's bits 27:24).
    pub device: u8,
    /// True for commands that use the LBA48 ("EXT") register layout.
    pub ext: bool,
}

/// Why a command cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// Zero sectors, or more than one command can move.
    BadCount(u32),
    /// The range does not fit the device's addressing (LBA28 without LBA48 support, or past 2^48).
    OutOfRange {
        /// First sector.
        lba: u64,
        /// Sectors.
        count: u32,
    },
    /// NCQ tag over 31.
    BadTag(u8),
}

impl TaskFile {
    /// A read or write of `count` sectors at `lba`. LBA28 is used when the range fits it (and the
    /// protocol is not NCQ, which is always 48-bit), otherwise LBA48 if `lba48` says the device has it.
    pub fn read_write(
        dir: Direction,
        protocol: Protocol,
        lba: u64,
        count: u32,
        lba48: bool,
    ) -> Result<Self, EncodeError> {
        let end = lba
            .checked_add(u64::from(count))
            .ok_or(EncodeError::OutOfRange { lba, count })?;
        if let Protocol::Ncq(tag) = protocol {
            if tag >= 32 {
                return Err(EncodeError::BadTag(tag));
            }
            if count == 0 || count > LBA48_MAX_SECTORS {
                return Err(EncodeError::BadCount(count));
            }
            if end > LBA48_LIMIT {
                return Err(EncodeError::OutOfRange { lba, count });
            }
            let command = match dir {
                Direction::Read => cmd::READ_FPDMA_QUEUED,
                Direction::Write => cmd::WRITE_FPDMA_QUEUED,
            };
            // NCQ: the sector count goes in FEATURES, the tag in COUNT bits 7:3.
            return Ok(Self {
                command,
                features: (count % LBA48_MAX_SECTORS) as u16,
                count: u16::from(tag) << 3,
                lba,
                device: DEVICE_LBA,
                ext: true,
            });
        }
        if count == 0 || count > LBA48_MAX_SECTORS {
            return Err(EncodeError::BadCount(count));
        }
        let fits28 = end <= LBA28_LIMIT && count <= LBA28_MAX_SECTORS;
        if fits28 {
            let command = match (dir, protocol) {
                (Direction::Read, Protocol::Pio) => cmd::READ_SECTORS,
                (Direction::Write, Protocol::Pio) => cmd::WRITE_SECTORS,
                (Direction::Read, Protocol::PioMultiple) => cmd::READ_MULTIPLE,
                (Direction::Write, Protocol::PioMultiple) => cmd::WRITE_MULTIPLE,
                (Direction::Read, _) => cmd::READ_DMA,
                (Direction::Write, _) => cmd::WRITE_DMA,
            };
            return Ok(Self {
                command,
                features: 0,
                count: (count % LBA28_MAX_SECTORS) as u16,
                lba,
                device: DEVICE_LBA | ((lba >> 24) & 0x0f) as u8,
                ext: false,
            });
        }
        if !lba48 || end > LBA48_LIMIT {
            return Err(EncodeError::OutOfRange { lba, count });
        }
        let command = match (dir, protocol) {
            (Direction::Read, Protocol::Pio) => cmd::READ_SECTORS_EXT,
            (Direction::Write, Protocol::Pio) => cmd::WRITE_SECTORS_EXT,
            (Direction::Read, Protocol::PioMultiple) => cmd::READ_MULTIPLE_EXT,
            (Direction::Write, Protocol::PioMultiple) => cmd::WRITE_MULTIPLE_EXT,
            (Direction::Read, _) => cmd::READ_DMA_EXT,
            (Direction::Write, _) => cmd::WRITE_DMA_EXT,
        };
        Ok(Self {
            command,
            features: 0,
            count: (count % LBA48_MAX_SECTORS) as u16,
            lba,
            device: DEVICE_LBA,
            ext: true,
        })
    }

    /// FLUSH CACHE EXT when the device has LBA48, else FLUSH CACHE.
    pub fn flush(lba48: bool) -> Self {
        let (command, ext) = if lba48 {
            (cmd::FLUSH_CACHE_EXT, true)
        } else {
            (cmd::FLUSH_CACHE, false)
        };
        Self {
            command,
            device: DEVICE_LBA,
            ext,
            ..Self::default()
        }
    }

    /// SET MULTIPLE MODE to `sectors` per data block.
    pub fn set_multiple(sectors: u8) -> Self {
        Self {
            command: cmd::SET_MULTIPLE,
            count: u16::from(sectors),
            ..Self::default()
        }
    }

    /// IDENTIFY DEVICE.
    pub fn identify() -> Self {
        Self {
            command: cmd::IDENTIFY,
            ..Self::default()
        }
    }

    /// The LBA's bytes 0..6, low first.
    pub fn lba_bytes(&self) -> [u8; 6] {
        let b = self.lba.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
}

/// What the drivers need from the 256-word IDENTIFY DEVICE data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// Addressable sectors (LBA48 count if supported, else the LBA28 count).
    pub sectors: u64,
    /// The device supports the 48-bit address feature set.
    pub lba48: bool,
    /// FLUSH CACHE (EXT) is supported.
    pub flush: bool,
    /// NCQ supported, with this queue depth (1..=32); `None` without NCQ.
    pub ncq_depth: Option<u8>,
    /// Most sectors per data block READ/WRITE MULTIPLE can use (word 47); 0 = not supported.
    pub multiple_max: u8,
    /// Model number (words 27..47), trimmed.
    pub model: Model,
}

/// An ATA model string: up to 40 printable ASCII bytes, kept inline (no allocation).
#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    bytes: [u8; 40],
    len: usize,
}

impl Model {
    /// The text (non-printable bytes were replaced by '?').
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Debug for Model {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why IDENTIFY data was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyError {
    /// Word 0 bit 15 set: not an ATA device (e.g. ATAPI).
    NotAta(u16),
    /// Word 49 bit 9 clear: no LBA addressing.
    NoLba(u16),
    /// Word 106 says logical sectors are not 512 bytes (this many words).
    SectorSize(u32),
    /// The buffer held fewer than 512 bytes.
    Short(usize),
}

impl Identify {
    /// Parses the 512-byte IDENTIFY DEVICE block (little-endian words, as the data port or the DMA
    /// engine delivered it).
    pub fn parse(data: &[u8]) -> Result<Self, IdentifyError> {
        if data.len() < 512 {
            return Err(IdentifyError::Short(data.len()));
        }
        let w = |i: usize| u16::from_le_bytes([data[2 * i], data[2 * i + 1]]);
        if w(0) & 0x8000 != 0 {
            return Err(IdentifyError::NotAta(w(0)));
        }
        if w(49) & (1 << 9) == 0 {
            return Err(IdentifyError::NoLba(w(49)));
        }
        // Word 106: bit 14 set / bit 15 clear = valid; bit 12 = logical sector longer than 256 words,
        // its size in words 117..118.
        let w106 = w(106);
        if w106 & 0xc000 == 0x4000 && w106 & (1 << 12) != 0 {
            let words = u32::from(w(117)) | u32::from(w(118)) << 16;
            if words != 256 {
                return Err(IdentifyError::SectorSize(words));
            }
        }
        let lba48 = w(83) & (1 << 10) != 0;
        let sectors28 = u64::from(w(60)) | u64::from(w(61)) << 16;
        let sectors48 = (0..4).fold(0u64, |acc, i| acc | u64::from(w(100 + i)) << (16 * i));
        let sectors = if lba48 && sectors48 != 0 {
            sectors48
        } else {
            sectors28
        };
        // Word 83 bit 12 (FLUSH CACHE) / bit 13 (FLUSH CACHE EXT); word 82 bit 5 = write cache.
        let flush = w(83) & (1 << 12) != 0 || w(83) & (1 << 13) != 0;
        let ncq_depth = (w(76) != 0xffff && w(76) & (1 << 8) != 0).then(|| (w(75) & 0x1f) as u8 + 1);
        // Word 47: 0x80 in the high byte, the block limit in the low byte.
        let multiple_max = if w(47) >> 8 == 0x80 { w(47) as u8 } else { 0 };
        let mut bytes = [0u8; 40];
        for i in 0..20 {
            // Each word holds two characters, the first in the high byte.
            let [hi, lo] = w(27 + i).to_be_bytes();
            bytes[2 * i] = hi;
            bytes[2 * i + 1] = lo;
        }
        for b in &mut bytes {
            *b = match *b {
                0 => b' ', // unset words pad like spaces
                0x20..0x7f => *b,
                _ => b'?',
            };
        }
        let len = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        Ok(Self {
            sectors,
            lba48,
            flush,
            ncq_depth,
            multiple_max,
            model: Model { bytes, len },
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn identify_block(words: &[(usize, u16)]) -> [u8; 512] {
        let mut b = [0u8; 512];
        for &(i, v) in words {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn lba28_read_fits_low_addresses() {
        let t = TaskFile::read_write(Direction::Read, Protocol::Pio, 0x0abc_def1, 8, true).unwrap();
        assert_eq!(t.command, cmd::READ_SECTORS);
        assert_eq!(t.count, 8);
        assert_eq!(t.device, DEVICE_LBA | 0x0a);
        assert_eq!(&t.lba_bytes()[..3], &[0xf1, 0xde, 0xbc]);
        assert!(!t.ext);
    }

    #[test]
    fn lba28_count_256_is_encoded_as_zero() {
        let t = TaskFile::read_write(Direction::Write, Protocol::Pio, 0, 256, false).unwrap();
        assert_eq!((t.command, t.count), (cmd::WRITE_SECTORS, 0));
    }

    #[test]
    fn crossing_2_pow_28_needs_lba48() {
        let lba = LBA28_LIMIT - 4;
        let t = TaskFile::read_write(Direction::Read, Protocol::Dma, lba, 8, true).unwrap();
        assert_eq!(t.command, cmd::READ_DMA_EXT);
        assert_eq!(t.device, DEVICE_LBA);
        assert_eq!(t.lba_bytes(), [0xfc, 0xff, 0xff, 0x0f, 0, 0]);
        assert!(t.ext);
        assert_eq!(
            TaskFile::read_write(Direction::Read, Protocol::Dma, lba, 8, false),
            Err(EncodeError::OutOfRange { lba, count: 8 })
        );
        // Ending exactly at the limit still fits LBA28.
        let t = TaskFile::read_write(Direction::Read, Protocol::Pio, lba, 4, false).unwrap();
        assert_eq!(t.command, cmd::READ_SECTORS);
    }

    #[test]
    fn large_counts_use_lba48_and_65536_is_zero() {
        let t = TaskFile::read_write(Direction::Write, Protocol::Pio, 0, 257, true).unwrap();
        assert_eq!((t.command, t.count), (cmd::WRITE_SECTORS_EXT, 257));
        let t = TaskFile::read_write(Direction::Write, Protocol::Dma, 0, 65_536, true).unwrap();
        assert_eq!((t.command, t.count), (cmd::WRITE_DMA_EXT, 0));
        assert_eq!(
            TaskFile::read_write(Direction::Read, Protocol::Pio, 0, 65_537, true),
            Err(EncodeError::BadCount(65_537))
        );
        assert_eq!(
            TaskFile::read_write(Direction::Read, Protocol::Pio, 0, 0, true),
            Err(EncodeError::BadCount(0))
        );
        assert_eq!(
            TaskFile::read_write(Direction::Read, Protocol::Pio, LBA48_LIMIT - 1, 2, true),
            Err(EncodeError::OutOfRange {
                lba: LBA48_LIMIT - 1,
                count: 2
            })
        );
        assert!(TaskFile::read_write(Direction::Read, Protocol::Pio, u64::MAX, 1, true).is_err());
    }

    #[test]
    fn ncq_puts_count_in_features_and_tag_in_count() {
        let t = TaskFile::read_write(Direction::Read, Protocol::Ncq(5), 1234, 8, true).unwrap();
        assert_eq!(t.command, cmd::READ_FPDMA_QUEUED);
        assert_eq!(t.features, 8);
        assert_eq!(t.count, 5 << 3);
        assert_eq!(t.device, DEVICE_LBA);
        assert_eq!(
            TaskFile::read_write(Direction::Write, Protocol::Ncq(32), 0, 1, true),
            Err(EncodeError::BadTag(32))
        );
    }

    #[test]
    fn multiple_mode_commands() {
        let t = TaskFile::read_write(Direction::Read, Protocol::PioMultiple, 8, 8, true).unwrap();
        assert_eq!(t.command, cmd::READ_MULTIPLE);
        let t = TaskFile::read_write(Direction::Write, Protocol::PioMultiple, LBA28_LIMIT, 8, true).unwrap();
        assert_eq!(t.command, cmd::WRITE_MULTIPLE_EXT);
        let t = TaskFile::set_multiple(16);
        assert_eq!((t.command, t.count), (cmd::SET_MULTIPLE, 16));
    }

    #[test]
    fn flush_follows_lba48() {
        assert_eq!(TaskFile::flush(true).command, cmd::FLUSH_CACHE_EXT);
        assert_eq!(TaskFile::flush(false).command, cmd::FLUSH_CACHE);
    }

    #[test]
    fn identify_reads_capacity_features_and_model() {
        let mut words = vec![
            (49, 1 << 9),
            (60, 0x0000),
            (61, 0x0100), // LBA28: 0x0100_0000 sectors
            (83, (1 << 10) | (1 << 13)),
            (100, 0x0000),
            (101, 0x0002), // LBA48 count, bits 31:16: 0x2_0000 sectors
            (75, 31),
            (76, 1 << 8),
            (47, 0x8010),
        ];
        // "QEMU HARDDISK" packed two characters per word, first in the high byte.
        let model = b"QEMU HARDDISK                           ";
        for i in 0..20 {
            words.push((27 + i, u16::from_be_bytes([model[2 * i], model[2 * i + 1]])));
        }
        let id = Identify::parse(&identify_block(&words)).unwrap();
        assert_eq!(id.sectors, 0x2_0000);
        assert!(id.lba48 && id.flush);
        assert_eq!(id.ncq_depth, Some(32));
        assert_eq!(id.multiple_max, 16);
        assert_eq!(id.model.as_str(), "QEMU HARDDISK");
    }

    #[test]
    fn identify_without_lba48_uses_words_60_61() {
        let id = Identify::parse(&identify_block(&[
            (49, 1 << 9),
            (60, 0x8000),
            (61, 0x0001),
            (101, 7),
        ]))
        .unwrap();
        assert_eq!(id.sectors, 0x1_8000);
        assert!(!id.lba48 && !id.flush);
        assert_eq!(id.ncq_depth, None);
        assert_eq!(id.multiple_max, 0);
        assert_eq!(id.model.as_str(), "");
    }

    #[test]
    fn identify_rejects_atapi_no_lba_odd_sectors_and_short_data() {
        assert_eq!(
            Identify::parse(&identify_block(&[(0, 0x85c0), (49, 1 << 9)])),
            Err(IdentifyError::NotAta(0x85c0))
        );
        assert_eq!(
            Identify::parse(&identify_block(&[])),
            Err(IdentifyError::NoLba(0))
        );
        assert_eq!(
            Identify::parse(&identify_block(&[(49, 1 << 9), (106, 0x5000), (117, 2048)])),
            Err(IdentifyError::SectorSize(2048))
        );
        assert_eq!(Identify::parse(&[0; 100]), Err(IdentifyError::Short(100)));
    }
}
