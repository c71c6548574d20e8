//! Connecting: the xenbus handshake, the shared ring and the bounds on what the backend publishes.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ring_protocol::abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifRequest, BlkifResponse, VDISK_READONLY,
    xenbus_keys as keys,
};
use ring_protocol::abi::xen::XEN_IO_PROTO_ABI_X86_64;
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::{FrontRing, IdSlabBox};

use super::{
    ABORT_TIMEOUT_US, BlkFeatures, BlkFront, BlkOptions, Irq, MAX_INDIRECT, MAX_RING_ORDER, protocol,
};
use crate::block::BlockInfo;
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::wait::Waiter;
use crate::xen::evtchn::EventChannels;
use crate::xen::grant::Granted;
use crate::xen::xenbus::{self, XenbusDevice, XenbusState};
use crate::xen::xenstore::{NO_TX, XenStore};
use crate::xen::{GrantMemory, XenPlatform};
use crate::{Error, Result};

/// What the backend published, bounded.
fn negotiated(
    sectors_512: u64,
    sector_size: u64,
    info: u64,
    max_indirect: u64,
    indirect: bool,
) -> Result<(u64, usize, u32, u32)> {
    if !(BLKIF_SECTOR_SIZE..=PAGE_SIZE as u64).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(protocol("sector-size", sector_size));
    }
    if sectors_512.checked_mul(BLKIF_SECTOR_SIZE).is_none() {
        return Err(protocol("sectors (the byte size overflows 64 bits)", sectors_512));
    }
    let info = u32::try_from(info).map_err(|_| protocol("info", info))?;
    // Fewer indirect segments than a direct request holds are no use (as Linux reads it).
    let indirect_segments = if indirect && max_indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST as u64 {
        max_indirect.min(u64::from(MAX_INDIRECT)) as u32
    } else {
        0
    };
    Ok((
        sectors_512 / (sector_size / BLKIF_SECTOR_SIZE),
        sector_size as usize,
        info,
        indirect_segments,
    ))
}

impl<G: GrantMemory, E: EventChannels> BlkFront<G, E> {
    /// Connects to the backend of `dev` over `platform`.
    ///
    /// # Errors
    /// A XenStore failure; [`Error::XenbusTimeout`] if the backend does not get ready or connect in
    /// time; [`Error::Protocol`] if it leaves the handshake or publishes a value out of bounds; grant
    /// or event channel failures. Whatever failed, the pages shared so far are ended, or abandoned to
    /// the backend (and counted) if it keeps holding them.
    pub fn connect<N: Notify>(
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        platform: XenPlatform<G, E>,
        dev: XenbusDevice,
        opts: BlkOptions,
    ) -> Result<Self> {
        xenbus::set_state(xs, w, NO_TX, &dev, XenbusState::Initialising)?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "InitWait (ready for the frontend's details)",
            |s| matches!(s, XenbusState::InitWait | XenbusState::Connected),
            opts.timeout_us,
        )?;
        let offered = xenbus::read_number(xs, w, NO_TX, &dev.be(keys::MAX_RING_PAGE_ORDER))?.unwrap_or(0);
        let order = u32::try_from(offered)
            .unwrap_or(u32::MAX)
            .min(opts.max_ring_order)
            .min(MAX_RING_ORDER);
        let pages = 1usize << order;
        let ring_buf = DmaBuf::new(platform.dma, pages * PAGE_SIZE)?;
        let ptr = core::ptr::NonNull::new(ring_buf.as_ptr().cast_mut()).expect("DMA buffer at null");
        // SAFETY: the ring pages are ours: a zeroed DmaBuf that moves into `ring_mem` below (its
        // memory does not move with it) and lives as long as the ring, declared after it in `Self`.
        // They are shared only with the backend, through grants, after this point.
        let ring = unsafe { FrontRing::<BlkifRequest, BlkifResponse>::init(ptr, pages * PAGE_SIZE) }
            .map_err(Error::Ring)?;
        let ring_mem = Granted::new(
            platform.grants.clone(),
            dev.backend_id,
            ring_buf,
            Access::ReadWrite,
        )
        .map_err(|e| Error::Ring(e.error))?;
        let port = platform.events.alloc_unbound(dev.backend_id)?;
        let slots_n = ring.size();
        let mut me = Self {
            platform,
            dev,
            ring,
            ring_mem: Some(ring_mem),
            port: Some(port),
            info: BlockInfo {
                capacity_sectors: 0,
                sector_size: BLKIF_SECTOR_SIZE as usize,
                max_in_flight: slots_n as usize,
                max_request_bytes: 0,
                read_only: true,
                flush: false,
            },
            features: BlkFeatures {
                ring_order: order,
                ring_slots: slots_n,
                indirect_segments: 0,
                flush_cache: false,
                barrier: false,
                sectors_512: 0,
                info: 0,
            },
            requests: IdSlabBox::new(slots_n as usize),
            batching: false,
            unpushed: false,
            stuck: Vec::new(),
            broken: None,
            irq: Arc::new(Irq::default()),
        };
        match me.negotiate(xs, w, opts) {
            Ok(()) => Ok(me),
            Err(e) => {
                // The backend may have mapped the ring by now: close the handshake so it lets go,
                // then end what it let go of; the drop abandons the rest.
                let t = opts.timeout_us.min(ABORT_TIMEOUT_US);
                let _ = xenbus::close(xs, w, &me.dev, t);
                me.close_port();
                me.release(w, t);
                Err(e)
            }
        }
    }

    /// The connection steps from publishing the rings on.
    fn negotiate<N: Notify>(&mut self, xs: &mut XenStore<N>, w: &dyn Waiter, opts: BlkOptions) -> Result<()> {
        let order = self.features.ring_order;
        let port = self.port.expect("open during connect");
        let d = &self.dev;
        let refs = self.ring_mem.as_ref().expect("ring during connect").refs();
        xs.transaction(w, |xs, tx| {
            if order == 0 {
                xs.write(w, tx, &d.fe(keys::RING_REF), format!("{}", refs[0]).as_bytes())?;
            } else {
                xs.write(w, tx, &d.fe(keys::RING_PAGE_ORDER), format!("{order}").as_bytes())?;
                for (i, r) in refs.iter().enumerate() {
                    xs.write(
                        w,
                        tx,
                        &d.fe(&format!("{}{i}", keys::RING_REF)),
                        format!("{r}").as_bytes(),
                    )?;
                }
            }
            xs.write(w, tx, &d.fe(keys::EVENT_CHANNEL), format!("{port}").as_bytes())?;
            xs.write(w, tx, &d.fe(keys::PROTOCOL), XEN_IO_PROTO_ABI_X86_64.as_bytes())?;
            xenbus::set_state(xs, w, tx, d, XenbusState::Initialised)
        })?;
        xenbus::wait_backend_or_refuse(
            xs,
            w,
            d,
            "Connected",
            |s| s == XenbusState::Connected,
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
            opts.timeout_us,
        )?;
        let sectors_512 = xs.read_u64(w, NO_TX, &d.be(keys::SECTORS))?;
        let sector_size =
            xenbus::read_number(xs, w, NO_TX, &d.be(keys::SECTOR_SIZE))?.unwrap_or(BLKIF_SECTOR_SIZE);
        let info_bits = xenbus::read_number(xs, w, NO_TX, &d.be(keys::INFO))?.unwrap_or(0);
        let flush_cache = xenbus::read_flag(xs, w, NO_TX, &d.be(keys::FEATURE_FLUSH_CACHE))?;
        let barrier = xenbus::read_flag(xs, w, NO_TX, &d.be(keys::FEATURE_BARRIER))?;
        let max_indirect =
            xenbus::read_number(xs, w, NO_TX, &d.be(keys::FEATURE_MAX_INDIRECT_SEGMENTS))?.unwrap_or(0);
        let (capacity_sectors, sector_size, info_bits, indirect_segments) =
            negotiated(sectors_512, sector_size, info_bits, max_indirect, opts.indirect)?;
        xenbus::set_state(xs, w, NO_TX, d, XenbusState::Connected)?;
        self.platform.events.bind(port, self.irq.clone())?;
        let max_pages = if indirect_segments > 0 {
            indirect_segments as usize
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        self.info = BlockInfo {
            capacity_sectors,
            sector_size,
            max_in_flight: self.ring.size() as usize,
            max_request_bytes: max_pages * PAGE_SIZE,
            read_only: info_bits & VDISK_READONLY != 0,
            flush: flush_cache || barrier,
        };
        self.features = BlkFeatures {
            indirect_segments,
            flush_cache,
            barrier,
            sectors_512,
            info: info_bits,
            ..self.features
        };
        Ok(())
    }
}
