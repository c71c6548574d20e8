//! Cross-check of `ring_protocol::abi`, and of the dom0 device ioctl ABI in
//! `pvkit_backends::xen::sys`, against Xen's C headers as installed on this machine.
//!
//! `tests/c/abi_layout.c` is compiled against `/usr/include/xen` and lists, for every ABI type pvkit
//! defines, its size, alignment, and each field's offset, size and signedness, plus the value of every
//! constant (ioctl request numbers as the header macros compute them). This test builds the same list
//! from the Rust definitions and requires the two to match entry for entry: a fact missing on either
//! side fails too, so neither list can silently shrink.
//!
//! `tests/c/virtio_layout.c` does the same for `ring_protocol::abi::virtio` against Linux's uapi
//! headers (`/usr/include/linux/virtio_*.h`).

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};

use pvkit_backends::xen::sys;
use pvkit_tests::xen_c::layout;
use ring_protocol::abi::blkif::{self, *};
use ring_protocol::abi::console::*;
use ring_protocol::abi::errno;
use ring_protocol::abi::event_channel::*;
use ring_protocol::abi::grant_table::*;
use ring_protocol::abi::netif::*;
use ring_protocol::abi::virtio::{self, *};
use ring_protocol::abi::xen::*;
use ring_protocol::abi::xenstore::*;
use ring_protocol::abi::{elfnote, pv, pvh};

/// Integer types, and whether they are signed.
trait Int: Copy {
    const SIGNED: bool;
    fn fact(self) -> i64;
}

macro_rules! impl_int {
    ($($t:ty => $signed:literal),*) => {$(
        impl Int for $t {
            const SIGNED: bool = $signed;
            fn fact(self) -> i64 {
                i64::try_from(self).expect("constant fits in i64")
            }
        }
    )*};
}
impl_int!(u8 => false, u16 => false, u32 => false, u64 => false, usize => false,
          i8 => true, i16 => true, i32 => true, i64 => true);

/// virtio's little-endian field types: unsigned, like the `__virtio*` / `__le*` they stand for.
macro_rules! impl_le {
    ($($t:ty),*) => {$(
        impl Int for $t {
            const SIGNED: bool = false;
            fn fact(self) -> i64 {
                i64::try_from(self.get()).expect("value fits in i64")
            }
        }
    )*};
}
impl_le!(virtio::Le16, virtio::Le32, virtio::Le64);

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

fn field_signed<T, F: Int>(_: fn(&T) -> &F) -> bool {
    F::SIGNED
}

/// The size of a union member, named by a closure that reads it. The closure is never called;
/// only its return type is used (a union member cannot be borrowed safely, so `field_size` can't).
fn member_size<U, F>(_: fn(U) -> F) -> usize {
    size_of::<F>()
}

#[derive(Default)]
struct Facts(BTreeMap<String, i64>);

impl Facts {
    fn add(&mut self, name: &str, value: i64) {
        let old = self.0.insert(name.to_owned(), value);
        assert!(old.is_none(), "Rust fact {name} listed twice");
    }
}

/// `ty!(facts, c_name, RustType)`: size and alignment.
macro_rules! ty {
    ($f:ident, $c:ident, $t:ty) => {
        $f.add(concat!("sizeof(", stringify!($c), ")"), size_of::<$t>() as i64);
        $f.add(concat!("alignof(", stringify!($c), ")"), align_of::<$t>() as i64);
    };
}

/// `field!(facts, c_type.c_field => RustType.rust_field)`: offset and size.
macro_rules! field {
    ($f:ident, $c:ident . $cf:tt => $t:ty, $rf:ident) => {
        $f.add(
            concat!("offsetof(", stringify!($c), ".", stringify!($cf), ")"),
            offset_of!($t, $rf) as i64,
        );
        $f.add(
            concat!("sizeof(", stringify!($c), ".", stringify!($cf), ")"),
            field_size(|s: &$t| &s.$rf) as i64,
        );
    };
}

/// `int!(...)`: as `field!`, plus signedness.
macro_rules! int {
    ($f:ident, $c:ident . $cf:tt => $t:ty, $rf:ident) => {
        field!($f, $c.$cf => $t, $rf);
        $f.add(
            concat!("signed(", stringify!($c), ".", stringify!($cf), ")"),
            field_signed(|s: &$t| &s.$rf) as i64,
        );
    };
}

/// `k!(facts, C_NAME => rust_value)`.
macro_rules! k {
    ($f:ident, $c:ident => $v:expr) => {
        $f.add(stringify!($c), Int::fact($v));
    };
}

fn rust_facts() -> Facts {
    let mut f = Facts::default();

    // xen.h, io/ring.h
    k!(f, DOMID_FIRST_RESERVED => DOMID_FIRST_RESERVED);
    k!(f, DOMID_SELF => DOMID_SELF);
    k!(f, DOMID_IO => DOMID_IO);
    k!(f, DOMID_XEN => DOMID_XEN);
    k!(f, DOMID_COW => DOMID_COW);
    k!(f, DOMID_INVALID => DOMID_INVALID);
    k!(f, DOMID_IDLE => DOMID_IDLE);
    f.add("sizeof(domid_t)", size_of::<DomId>() as i64);
    f.add("sizeof(xen_pfn_t)", size_of::<XenPfn>() as i64);
    k!(f, XEN_PAGE_SHIFT => XEN_PAGE_SHIFT);
    // Every hypercall number by its xen.h name: checks the numbers and the names
    // `hypercall_name` reports.
    for &(nr, name) in HYPERCALLS {
        f.add(&format!("__HYPERVISOR_{name}"), i64::from(nr));
        assert_eq!(hypercall_name(nr), Some(name));
    }
    k!(f, VIRQ_TIMER => VIRQ_TIMER);
    k!(f, VIRQ_DEBUG => VIRQ_DEBUG);
    k!(f, VIRQ_CONSOLE => VIRQ_CONSOLE);

    pv_guest_facts(&mut f);

    // errno.h
    k!(f, XEN_EPERM => errno::EPERM);
    k!(f, XEN_ENOENT => errno::ENOENT);
    k!(f, XEN_ESRCH => errno::ESRCH);
    k!(f, XEN_EIO => errno::EIO);
    k!(f, XEN_E2BIG => errno::E2BIG);
    k!(f, XEN_EAGAIN => errno::EAGAIN);
    k!(f, XEN_ENOMEM => errno::ENOMEM);
    k!(f, XEN_EACCES => errno::EACCES);
    k!(f, XEN_EFAULT => errno::EFAULT);
    k!(f, XEN_EBUSY => errno::EBUSY);
    k!(f, XEN_EEXIST => errno::EEXIST);
    k!(f, XEN_EISDIR => errno::EISDIR);
    k!(f, XEN_EINVAL => errno::EINVAL);
    k!(f, XEN_ENOSPC => errno::ENOSPC);
    k!(f, XEN_EROFS => errno::EROFS);
    k!(f, XEN_ENOSYS => errno::ENOSYS);
    k!(f, XEN_ENOTEMPTY => errno::ENOTEMPTY);
    k!(f, XEN_EOPNOTSUPP => errno::EOPNOTSUPP);
    k!(f, XEN_EISCONN => errno::EISCONN);

    // grant_table.h
    f.add("sizeof(grant_ref_t)", size_of::<GrantRef>() as i64);
    f.add("sizeof(grant_handle_t)", size_of::<GrantHandle>() as i64);
    k!(f, GNTTAB_NR_RESERVED_ENTRIES => GNTTAB_NR_RESERVED_ENTRIES);
    k!(f, GNTTAB_RESERVED_CONSOLE => GNTTAB_RESERVED_CONSOLE);
    k!(f, GNTTAB_RESERVED_XENSTORE => GNTTAB_RESERVED_XENSTORE);
    k!(f, GTF_invalid => GTF_INVALID);
    k!(f, GTF_permit_access => GTF_PERMIT_ACCESS);
    k!(f, GTF_accept_transfer => GTF_ACCEPT_TRANSFER);
    k!(f, GTF_transitive => GTF_TRANSITIVE);
    k!(f, GTF_type_mask => GTF_TYPE_MASK);
    k!(f, GTF_readonly => GTF_READONLY);
    k!(f, GTF_reading => GTF_READING);
    k!(f, GTF_writing => GTF_WRITING);
    k!(f, GTF_PWT => GTF_PWT);
    k!(f, GTF_PCD => GTF_PCD);
    k!(f, GTF_PAT => GTF_PAT);
    k!(f, GTF_sub_page => GTF_SUB_PAGE);
    k!(f, GTF_transfer_committed => GTF_TRANSFER_COMMITTED);
    k!(f, GTF_transfer_completed => GTF_TRANSFER_COMPLETED);
    ty!(f, grant_entry_v1, GrantEntryV1);
    int!(f, grant_entry_v1.flags => GrantEntryV1, flags);
    int!(f, grant_entry_v1.domid => GrantEntryV1, domid);
    int!(f, grant_entry_v1.frame => GrantEntryV1, frame);
    k!(f, GNTTABOP_map_grant_ref => GNTTABOP_MAP_GRANT_REF);
    k!(f, GNTTABOP_unmap_grant_ref => GNTTABOP_UNMAP_GRANT_REF);
    k!(f, GNTTABOP_setup_table => GNTTABOP_SETUP_TABLE);
    k!(f, GNTTABOP_dump_table => GNTTABOP_DUMP_TABLE);
    k!(f, GNTTABOP_transfer => GNTTABOP_TRANSFER);
    k!(f, GNTTABOP_copy => GNTTABOP_COPY);
    k!(f, GNTTABOP_query_size => GNTTABOP_QUERY_SIZE);
    k!(f, GNTTABOP_unmap_and_replace => GNTTABOP_UNMAP_AND_REPLACE);
    k!(f, GNTTABOP_set_version => GNTTABOP_SET_VERSION);
    k!(f, GNTTABOP_get_version => GNTTABOP_GET_VERSION);
    ty!(f, gnttab_setup_table, GnttabSetupTable);
    int!(f, gnttab_setup_table.dom => GnttabSetupTable, dom);
    int!(f, gnttab_setup_table.nr_frames => GnttabSetupTable, nr_frames);
    int!(f, gnttab_setup_table.status => GnttabSetupTable, status);
    field!(f, gnttab_setup_table.frame_list => GnttabSetupTable, frame_list);
    k!(f, GNTMAP_device_map => GNTMAP_DEVICE_MAP);
    k!(f, GNTMAP_host_map => GNTMAP_HOST_MAP);
    k!(f, GNTMAP_readonly => GNTMAP_READONLY);
    k!(f, GNTMAP_application_map => GNTMAP_APPLICATION_MAP);
    k!(f, GNTMAP_contains_pte => GNTMAP_CONTAINS_PTE);
    k!(f, GNTMAP_guest_avail_mask => GNTMAP_GUEST_AVAIL_MASK);
    ty!(f, gnttab_map_grant_ref, GnttabMapGrantRef);
    int!(f, gnttab_map_grant_ref.host_addr => GnttabMapGrantRef, host_addr);
    int!(f, gnttab_map_grant_ref.flags => GnttabMapGrantRef, flags);
    int!(f, gnttab_map_grant_ref.ref => GnttabMapGrantRef, ref_);
    int!(f, gnttab_map_grant_ref.dom => GnttabMapGrantRef, dom);
    int!(f, gnttab_map_grant_ref.status => GnttabMapGrantRef, status);
    int!(f, gnttab_map_grant_ref.handle => GnttabMapGrantRef, handle);
    int!(f, gnttab_map_grant_ref.dev_bus_addr => GnttabMapGrantRef, dev_bus_addr);
    ty!(f, gnttab_unmap_grant_ref, GnttabUnmapGrantRef);
    int!(f, gnttab_unmap_grant_ref.host_addr => GnttabUnmapGrantRef, host_addr);
    int!(f, gnttab_unmap_grant_ref.dev_bus_addr => GnttabUnmapGrantRef, dev_bus_addr);
    int!(f, gnttab_unmap_grant_ref.handle => GnttabUnmapGrantRef, handle);
    int!(f, gnttab_unmap_grant_ref.status => GnttabUnmapGrantRef, status);
    k!(f, GNTCOPY_source_gref => GNTCOPY_SOURCE_GREF);
    k!(f, GNTCOPY_dest_gref => GNTCOPY_DEST_GREF);
    ty!(f, gnttab_copy_ptr, GnttabCopyPtr);
    field!(f, gnttab_copy_ptr.u => GnttabCopyPtr, u);
    // The union `u`: `ref` is the low 32 bits of our u64 (little-endian), `gmfn` all of it.
    f.add(
        "offsetof(gnttab_copy_ptr.u.ref)",
        offset_of!(GnttabCopyPtr, u) as i64,
    );
    f.add("sizeof(gnttab_copy_ptr.u.ref)", size_of::<GrantRef>() as i64);
    f.add("signed(gnttab_copy_ptr.u.ref)", GrantRef::SIGNED as i64);
    f.add(
        "offsetof(gnttab_copy_ptr.u.gmfn)",
        offset_of!(GnttabCopyPtr, u) as i64,
    );
    f.add("sizeof(gnttab_copy_ptr.u.gmfn)", size_of::<XenPfn>() as i64);
    f.add("signed(gnttab_copy_ptr.u.gmfn)", XenPfn::SIGNED as i64);
    int!(f, gnttab_copy_ptr.domid => GnttabCopyPtr, domid);
    int!(f, gnttab_copy_ptr.offset => GnttabCopyPtr, offset);
    ty!(f, gnttab_copy, GnttabCopy);
    field!(f, gnttab_copy.source => GnttabCopy, source);
    field!(f, gnttab_copy.dest => GnttabCopy, dest);
    int!(f, gnttab_copy.len => GnttabCopy, len);
    int!(f, gnttab_copy.flags => GnttabCopy, flags);
    int!(f, gnttab_copy.status => GnttabCopy, status);
    ty!(f, gnttab_query_size, GnttabQuerySize);
    int!(f, gnttab_query_size.dom => GnttabQuerySize, dom);
    int!(f, gnttab_query_size.nr_frames => GnttabQuerySize, nr_frames);
    int!(f, gnttab_query_size.max_nr_frames => GnttabQuerySize, max_nr_frames);
    int!(f, gnttab_query_size.status => GnttabQuerySize, status);
    k!(f, GNTST_okay => GNTST_OKAY);
    k!(f, GNTST_general_error => GNTST_GENERAL_ERROR);
    k!(f, GNTST_bad_domain => GNTST_BAD_DOMAIN);
    k!(f, GNTST_bad_gntref => GNTST_BAD_GNTREF);
    k!(f, GNTST_bad_handle => GNTST_BAD_HANDLE);
    k!(f, GNTST_bad_virt_addr => GNTST_BAD_VIRT_ADDR);
    k!(f, GNTST_bad_dev_addr => GNTST_BAD_DEV_ADDR);
    k!(f, GNTST_no_device_space => GNTST_NO_DEVICE_SPACE);
    k!(f, GNTST_permission_denied => GNTST_PERMISSION_DENIED);
    k!(f, GNTST_bad_page => GNTST_BAD_PAGE);
    k!(f, GNTST_bad_copy_arg => GNTST_BAD_COPY_ARG);
    k!(f, GNTST_address_too_big => GNTST_ADDRESS_TOO_BIG);
    k!(f, GNTST_eagain => GNTST_EAGAIN);
    k!(f, GNTST_no_space => GNTST_NO_SPACE);

    // event_channel.h
    f.add("sizeof(evtchn_port_t)", size_of::<EvtchnPort>() as i64);
    k!(f, EVTCHNOP_bind_interdomain => EVTCHNOP_BIND_INTERDOMAIN);
    k!(f, EVTCHNOP_bind_virq => EVTCHNOP_BIND_VIRQ);
    k!(f, EVTCHNOP_bind_pirq => EVTCHNOP_BIND_PIRQ);
    k!(f, EVTCHNOP_close => EVTCHNOP_CLOSE);
    k!(f, EVTCHNOP_send => EVTCHNOP_SEND);
    k!(f, EVTCHNOP_status => EVTCHNOP_STATUS);
    k!(f, EVTCHNOP_alloc_unbound => EVTCHNOP_ALLOC_UNBOUND);
    k!(f, EVTCHNOP_bind_ipi => EVTCHNOP_BIND_IPI);
    k!(f, EVTCHNOP_bind_vcpu => EVTCHNOP_BIND_VCPU);
    k!(f, EVTCHNOP_unmask => EVTCHNOP_UNMASK);
    ty!(f, evtchn_alloc_unbound, EvtchnAllocUnbound);
    int!(f, evtchn_alloc_unbound.dom => EvtchnAllocUnbound, dom);
    int!(f, evtchn_alloc_unbound.remote_dom => EvtchnAllocUnbound, remote_dom);
    int!(f, evtchn_alloc_unbound.port => EvtchnAllocUnbound, port);
    ty!(f, evtchn_bind_interdomain, EvtchnBindInterdomain);
    int!(f, evtchn_bind_interdomain.remote_dom => EvtchnBindInterdomain, remote_dom);
    int!(f, evtchn_bind_interdomain.remote_port => EvtchnBindInterdomain, remote_port);
    int!(f, evtchn_bind_interdomain.local_port => EvtchnBindInterdomain, local_port);
    ty!(f, evtchn_bind_virq, EvtchnBindVirq);
    int!(f, evtchn_bind_virq.virq => EvtchnBindVirq, virq);
    int!(f, evtchn_bind_virq.vcpu => EvtchnBindVirq, vcpu);
    int!(f, evtchn_bind_virq.port => EvtchnBindVirq, port);
    ty!(f, evtchn_close, EvtchnClose);
    int!(f, evtchn_close.port => EvtchnClose, port);
    ty!(f, evtchn_send, EvtchnSend);
    int!(f, evtchn_send.port => EvtchnSend, port);
    ty!(f, evtchn_unmask, EvtchnUnmask);
    int!(f, evtchn_unmask.port => EvtchnUnmask, port);

    // io/blkif.h
    f.add("sizeof(blkif_vdev_t)", size_of::<BlkifVdev>() as i64);
    f.add("sizeof(blkif_sector_t)", size_of::<BlkifSector>() as i64);
    k!(f, BLKIF_OP_READ => BLKIF_OP_READ);
    k!(f, BLKIF_OP_WRITE => BLKIF_OP_WRITE);
    k!(f, BLKIF_OP_WRITE_BARRIER => BLKIF_OP_WRITE_BARRIER);
    k!(f, BLKIF_OP_FLUSH_DISKCACHE => BLKIF_OP_FLUSH_DISKCACHE);
    k!(f, BLKIF_OP_RESERVED_1 => BLKIF_OP_RESERVED_1);
    k!(f, BLKIF_OP_DISCARD => BLKIF_OP_DISCARD);
    k!(f, BLKIF_OP_INDIRECT => BLKIF_OP_INDIRECT);
    k!(f, BLKIF_MAX_SEGMENTS_PER_REQUEST => BLKIF_MAX_SEGMENTS_PER_REQUEST);
    k!(f, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST => BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    k!(f, BLKIF_DISCARD_SECURE => BLKIF_DISCARD_SECURE);
    k!(f, BLKIF_RSP_EOPNOTSUPP => BLKIF_RSP_EOPNOTSUPP);
    k!(f, BLKIF_RSP_ERROR => BLKIF_RSP_ERROR);
    k!(f, BLKIF_RSP_OKAY => BLKIF_RSP_OKAY);
    k!(f, VDISK_CDROM => VDISK_CDROM);
    k!(f, VDISK_REMOVABLE => VDISK_REMOVABLE);
    k!(f, VDISK_READONLY => VDISK_READONLY);
    ty!(f, blkif_request_segment, BlkifRequestSegment);
    int!(f, blkif_request_segment.gref => BlkifRequestSegment, gref);
    int!(f, blkif_request_segment.first_sect => BlkifRequestSegment, first_sect);
    int!(f, blkif_request_segment.last_sect => BlkifRequestSegment, last_sect);
    ty!(f, blkif_request, BlkifRequest);
    int!(f, blkif_request.operation => BlkifRequest, operation);
    int!(f, blkif_request.nr_segments => BlkifRequest, nr_segments);
    int!(f, blkif_request.handle => BlkifRequest, handle);
    int!(f, blkif_request.id => BlkifRequest, id);
    int!(f, blkif_request.sector_number => BlkifRequest, sector_number);
    field!(f, blkif_request.seg => BlkifRequest, seg);
    ty!(f, blkif_request_discard, BlkifRequestDiscard);
    int!(f, blkif_request_discard.operation => BlkifRequestDiscard, operation);
    int!(f, blkif_request_discard.flag => BlkifRequestDiscard, flag);
    int!(f, blkif_request_discard.handle => BlkifRequestDiscard, handle);
    int!(f, blkif_request_discard.id => BlkifRequestDiscard, id);
    int!(f, blkif_request_discard.sector_number => BlkifRequestDiscard, sector_number);
    int!(f, blkif_request_discard.nr_sectors => BlkifRequestDiscard, nr_sectors);
    ty!(f, blkif_request_indirect, BlkifRequestIndirect);
    int!(f, blkif_request_indirect.operation => BlkifRequestIndirect, operation);
    int!(f, blkif_request_indirect.indirect_op => BlkifRequestIndirect, indirect_op);
    int!(f, blkif_request_indirect.nr_segments => BlkifRequestIndirect, nr_segments);
    int!(f, blkif_request_indirect.id => BlkifRequestIndirect, id);
    int!(f, blkif_request_indirect.sector_number => BlkifRequestIndirect, sector_number);
    int!(f, blkif_request_indirect.handle => BlkifRequestIndirect, handle);
    field!(f, blkif_request_indirect.indirect_grefs => BlkifRequestIndirect, indirect_grefs);
    ty!(f, blkif_response, BlkifResponse);
    int!(f, blkif_response.id => BlkifResponse, id);
    int!(f, blkif_response.operation => BlkifResponse, operation);
    int!(f, blkif_response.status => BlkifResponse, status);
    k!(f, segments_per_indirect_page => blkif::BLKIF_SEGMENTS_PER_INDIRECT_PAGE);

    // io/netif.h
    k!(f, XEN_NETIF_NR_SLOTS_MIN => XEN_NETIF_NR_SLOTS_MIN);
    k!(f, XEN_NETIF_MAX_TX_SIZE => XEN_NETIF_MAX_TX_SIZE);
    k!(f, NETTXF_csum_blank => NETTXF_CSUM_BLANK);
    k!(f, NETTXF_data_validated => NETTXF_DATA_VALIDATED);
    k!(f, NETTXF_more_data => NETTXF_MORE_DATA);
    k!(f, NETTXF_extra_info => NETTXF_EXTRA_INFO);
    k!(f, NETRXF_data_validated => NETRXF_DATA_VALIDATED);
    k!(f, NETRXF_csum_blank => NETRXF_CSUM_BLANK);
    k!(f, NETRXF_more_data => NETRXF_MORE_DATA);
    k!(f, NETRXF_extra_info => NETRXF_EXTRA_INFO);
    k!(f, NETRXF_gso_prefix => NETRXF_GSO_PREFIX);
    k!(f, XEN_NETIF_EXTRA_TYPE_NONE => XEN_NETIF_EXTRA_TYPE_NONE);
    k!(f, XEN_NETIF_EXTRA_TYPE_GSO => XEN_NETIF_EXTRA_TYPE_GSO);
    k!(f, XEN_NETIF_EXTRA_TYPE_MCAST_ADD => XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
    k!(f, XEN_NETIF_EXTRA_TYPE_MCAST_DEL => XEN_NETIF_EXTRA_TYPE_MCAST_DEL);
    k!(f, XEN_NETIF_EXTRA_TYPE_HASH => XEN_NETIF_EXTRA_TYPE_HASH);
    k!(f, XEN_NETIF_EXTRA_TYPE_MAX => XEN_NETIF_EXTRA_TYPE_MAX);
    k!(f, XEN_NETIF_EXTRA_FLAG_MORE => XEN_NETIF_EXTRA_FLAG_MORE);
    k!(f, XEN_NETIF_GSO_TYPE_NONE => XEN_NETIF_GSO_TYPE_NONE);
    k!(f, XEN_NETIF_GSO_TYPE_TCPV4 => XEN_NETIF_GSO_TYPE_TCPV4);
    k!(f, XEN_NETIF_GSO_TYPE_TCPV6 => XEN_NETIF_GSO_TYPE_TCPV6);
    k!(f, _XEN_NETIF_CTRL_HASH_TYPE_IPV4 => XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT);
    k!(f, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP => XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT);
    k!(f, _XEN_NETIF_CTRL_HASH_TYPE_IPV6 => XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT);
    k!(f, _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP => XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT);
    k!(f, XEN_NETIF_CTRL_HASH_ALGORITHM_NONE => XEN_NETIF_CTRL_HASH_ALGORITHM_NONE);
    k!(f, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ => XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ);
    k!(f, NETIF_RSP_DROPPED => NETIF_RSP_DROPPED);
    k!(f, NETIF_RSP_ERROR => NETIF_RSP_ERROR);
    k!(f, NETIF_RSP_OKAY => NETIF_RSP_OKAY);
    k!(f, NETIF_RSP_NULL => NETIF_RSP_NULL);
    ty!(f, netif_tx_request, NetifTxRequest);
    int!(f, netif_tx_request.gref => NetifTxRequest, gref);
    int!(f, netif_tx_request.offset => NetifTxRequest, offset);
    int!(f, netif_tx_request.flags => NetifTxRequest, flags);
    int!(f, netif_tx_request.id => NetifTxRequest, id);
    int!(f, netif_tx_request.size => NetifTxRequest, size);
    ty!(f, netif_tx_response, NetifTxResponse);
    int!(f, netif_tx_response.id => NetifTxResponse, id);
    int!(f, netif_tx_response.status => NetifTxResponse, status);
    ty!(f, netif_rx_request, NetifRxRequest);
    int!(f, netif_rx_request.id => NetifRxRequest, id);
    int!(f, netif_rx_request.pad => NetifRxRequest, pad);
    int!(f, netif_rx_request.gref => NetifRxRequest, gref);
    ty!(f, netif_rx_response, NetifRxResponse);
    int!(f, netif_rx_response.id => NetifRxResponse, id);
    int!(f, netif_rx_response.offset => NetifRxResponse, offset);
    int!(f, netif_rx_response.flags => NetifRxResponse, flags);
    int!(f, netif_rx_response.status => NetifRxResponse, status);
    ty!(f, netif_extra_info, NetifExtraInfo);
    int!(f, netif_extra_info.type => NetifExtraInfo, type_);
    int!(f, netif_extra_info.flags => NetifExtraInfo, flags);
    field!(f, netif_extra_info.u => NetifExtraInfo, u);
    // The union variants sit at `u`'s offset.
    let u = offset_of!(NetifExtraInfo, u);
    macro_rules! variant {
        ($cname:literal, $t:ty, $rf:ident, int) => {
            variant!($cname, $t, $rf);
            f.add(
                concat!("signed(netif_extra_info.u.", $cname, ")"),
                field_signed(|s: &$t| &s.$rf) as i64,
            );
        };
        ($cname:literal, $t:ty, $rf:ident) => {
            f.add(
                concat!("offsetof(netif_extra_info.u.", $cname, ")"),
                (u + offset_of!($t, $rf)) as i64,
            );
            f.add(
                concat!("sizeof(netif_extra_info.u.", $cname, ")"),
                field_size(|s: &$t| &s.$rf) as i64,
            );
        };
    }
    variant!("gso.size", NetifExtraInfoGso, size, int);
    variant!("gso.type", NetifExtraInfoGso, type_, int);
    variant!("gso.pad", NetifExtraInfoGso, pad, int);
    variant!("gso.features", NetifExtraInfoGso, features, int);
    variant!("mcast.addr", NetifExtraInfoMcast, addr);
    variant!("hash.type", NetifExtraInfoHash, type_, int);
    variant!("hash.algorithm", NetifExtraInfoHash, algorithm, int);
    variant!("hash.value", NetifExtraInfoHash, value);

    // io/console.h
    ty!(f, xencons_interface, XenconsInterface);
    field!(f, xencons_interface.in => XenconsInterface, in_);
    field!(f, xencons_interface.out => XenconsInterface, out);
    int!(f, xencons_interface.in_cons => XenconsInterface, in_cons);
    int!(f, xencons_interface.in_prod => XenconsInterface, in_prod);
    int!(f, xencons_interface.out_cons => XenconsInterface, out_cons);
    int!(f, xencons_interface.out_prod => XenconsInterface, out_prod);
    // The ring sizes are the arrays' sizes (checked above); the constants must agree with them.
    assert_eq!(XENCONS_IN_SIZE, field_size(|s: &XenconsInterface| &s.in_));
    assert_eq!(XENCONS_OUT_SIZE, field_size(|s: &XenconsInterface| &s.out));

    // io/xs_wire.h
    use XsdSockmsgType as T;
    k!(f, XS_CONTROL => T::Control as u32);
    k!(f, XS_DEBUG => T::Control as u32);
    k!(f, XS_DIRECTORY => T::Directory as u32);
    k!(f, XS_READ => T::Read as u32);
    k!(f, XS_GET_PERMS => T::GetPerms as u32);
    k!(f, XS_WATCH => T::Watch as u32);
    k!(f, XS_UNWATCH => T::Unwatch as u32);
    k!(f, XS_TRANSACTION_START => T::TransactionStart as u32);
    k!(f, XS_TRANSACTION_END => T::TransactionEnd as u32);
    k!(f, XS_INTRODUCE => T::Introduce as u32);
    k!(f, XS_RELEASE => T::Release as u32);
    k!(f, XS_GET_DOMAIN_PATH => T::GetDomainPath as u32);
    k!(f, XS_WRITE => T::Write as u32);
    k!(f, XS_MKDIR => T::Mkdir as u32);
    k!(f, XS_RM => T::Rm as u32);
    k!(f, XS_SET_PERMS => T::SetPerms as u32);
    k!(f, XS_WATCH_EVENT => T::WatchEvent as u32);
    k!(f, XS_ERROR => T::Error as u32);
    k!(f, XS_IS_DOMAIN_INTRODUCED => T::IsDomainIntroduced as u32);
    k!(f, XS_RESUME => T::Resume as u32);
    k!(f, XS_SET_TARGET => T::SetTarget as u32);
    k!(f, XS_RESET_WATCHES => T::ResetWatches as u32);
    k!(f, XS_DIRECTORY_PART => T::DirectoryPart as u32);
    k!(f, XS_TYPE_COUNT => XS_TYPE_COUNT);
    k!(f, XS_INVALID => XS_INVALID);
    k!(f, XS_WATCH_PATH => XS_WATCH_PATH);
    k!(f, XS_WATCH_TOKEN => XS_WATCH_TOKEN);
    ty!(f, xsd_sockmsg, XsdSockmsg);
    int!(f, xsd_sockmsg.type => XsdSockmsg, type_);
    int!(f, xsd_sockmsg.req_id => XsdSockmsg, req_id);
    int!(f, xsd_sockmsg.tx_id => XsdSockmsg, tx_id);
    int!(f, xsd_sockmsg.len => XsdSockmsg, len);
    k!(f, XENSTORE_RING_SIZE => XENSTORE_RING_SIZE);
    k!(f, XENSTORE_PAYLOAD_MAX => XENSTORE_PAYLOAD_MAX);
    k!(f, XENSTORE_ABS_PATH_MAX => XENSTORE_ABS_PATH_MAX);
    k!(f, XENSTORE_REL_PATH_MAX => XENSTORE_REL_PATH_MAX);
    k!(f, XENSTORE_SERVER_FEATURE_RECONNECTION => XENSTORE_SERVER_FEATURE_RECONNECTION);
    k!(f, XENSTORE_SERVER_FEATURE_ERROR => XENSTORE_SERVER_FEATURE_ERROR);
    k!(f, XENSTORE_CONNECTED => XENSTORE_CONNECTED);
    k!(f, XENSTORE_RECONNECT => XENSTORE_RECONNECT);
    k!(f, XENSTORE_ERROR_NONE => XENSTORE_ERROR_NONE);
    k!(f, XENSTORE_ERROR_COMM => XENSTORE_ERROR_COMM);
    k!(f, XENSTORE_ERROR_RINGIDX => XENSTORE_ERROR_RINGIDX);
    k!(f, XENSTORE_ERROR_PROTO => XENSTORE_ERROR_PROTO);
    ty!(f, xenstore_domain_interface, XenstoreDomainInterface);
    field!(f, xenstore_domain_interface.req => XenstoreDomainInterface, req);
    field!(f, xenstore_domain_interface.rsp => XenstoreDomainInterface, rsp);
    int!(f, xenstore_domain_interface.req_cons => XenstoreDomainInterface, req_cons);
    int!(f, xenstore_domain_interface.req_prod => XenstoreDomainInterface, req_prod);
    int!(f, xenstore_domain_interface.rsp_cons => XenstoreDomainInterface, rsp_cons);
    int!(f, xenstore_domain_interface.rsp_prod => XenstoreDomainInterface, rsp_prod);
    int!(f, xenstore_domain_interface.server_features => XenstoreDomainInterface, server_features);
    int!(f, xenstore_domain_interface.connection => XenstoreDomainInterface, connection);
    int!(f, xenstore_domain_interface.error => XenstoreDomainInterface, error);

    dom0_ioctl_facts(&mut f);
    f
}

/// The x86_64 PV guest ABI (`ring_protocol::abi::pv`), its ELF notes and the PVH start info.
fn pv_guest_facts(f: &mut Facts) {
    use pv::*;
    use pvh::*;

    k!(f, MAX_GUEST_CMDLINE => MAX_GUEST_CMDLINE);
    k!(f, SIF_PRIVILEGED => SIF_PRIVILEGED);
    k!(f, SIF_INITDOMAIN => SIF_INITDOMAIN);
    k!(f, SIF_MULTIBOOT_MOD => SIF_MULTIBOOT_MOD);
    k!(f, SIF_MOD_START_PFN => SIF_MOD_START_PFN);
    k!(f, SIF_VIRT_P2M_4TOOLS => SIF_VIRT_P2M_4TOOLS);
    ty!(f, start_info, StartInfo);
    field!(f, start_info.magic => StartInfo, magic);
    int!(f, start_info.nr_pages => StartInfo, nr_pages);
    int!(f, start_info.shared_info => StartInfo, shared_info);
    int!(f, start_info.flags => StartInfo, flags);
    int!(f, start_info.store_mfn => StartInfo, store_mfn);
    int!(f, start_info.store_evtchn => StartInfo, store_evtchn);
    // The console union: domU's mfn and evtchn are our fields; dom0's two u32 overlay the mfn.
    let console = offset_of!(StartInfo, console_mfn) as i64;
    for (c, offset, size) in [
        ("domU.mfn", console, size_of::<XenPfn>()),
        ("domU.evtchn", offset_of!(StartInfo, console_evtchn) as i64, 4),
        ("dom0.info_off", console, 4),
        ("dom0.info_size", console + 4, 4),
    ] {
        f.add(&format!("offsetof(start_info.console.{c})"), offset);
        f.add(&format!("sizeof(start_info.console.{c})"), size as i64);
        f.add(&format!("signed(start_info.console.{c})"), 0);
    }
    int!(f, start_info.pt_base => StartInfo, pt_base);
    int!(f, start_info.nr_pt_frames => StartInfo, nr_pt_frames);
    int!(f, start_info.mfn_list => StartInfo, mfn_list);
    int!(f, start_info.mod_start => StartInfo, mod_start);
    int!(f, start_info.mod_len => StartInfo, mod_len);
    field!(f, start_info.cmd_line => StartInfo, cmd_line);
    int!(f, start_info.first_p2m_pfn => StartInfo, first_p2m_pfn);
    int!(f, start_info.nr_p2m_frames => StartInfo, nr_p2m_frames);
    k!(f, XEN_LEGACY_MAX_VCPUS => XEN_LEGACY_MAX_VCPUS);
    k!(f, EVTCHN_2L_NR_CHANNELS => EVTCHN_2L_NR_CHANNELS);
    k!(f, XEN_PVCLOCK_TSC_STABLE_BIT => XEN_PVCLOCK_TSC_STABLE_BIT);
    k!(f, XEN_PVCLOCK_GUEST_STOPPED => XEN_PVCLOCK_GUEST_STOPPED);
    ty!(f, vcpu_time_info, VcpuTimeInfo);
    int!(f, vcpu_time_info.version => VcpuTimeInfo, version);
    int!(f, vcpu_time_info.pad0 => VcpuTimeInfo, pad0);
    int!(f, vcpu_time_info.tsc_timestamp => VcpuTimeInfo, tsc_timestamp);
    int!(f, vcpu_time_info.system_time => VcpuTimeInfo, system_time);
    int!(f, vcpu_time_info.tsc_to_system_mul => VcpuTimeInfo, tsc_to_system_mul);
    int!(f, vcpu_time_info.tsc_shift => VcpuTimeInfo, tsc_shift);
    int!(f, vcpu_time_info.flags => VcpuTimeInfo, flags);
    field!(f, vcpu_time_info.pad1 => VcpuTimeInfo, pad1);
    ty!(f, arch_vcpu_info, ArchVcpuInfo);
    int!(f, arch_vcpu_info.cr2 => ArchVcpuInfo, cr2);
    int!(f, arch_vcpu_info.pad => ArchVcpuInfo, pad);
    ty!(f, vcpu_info, VcpuInfo);
    int!(f, vcpu_info.evtchn_upcall_pending => VcpuInfo, evtchn_upcall_pending);
    int!(f, vcpu_info.evtchn_upcall_mask => VcpuInfo, evtchn_upcall_mask);
    int!(f, vcpu_info.evtchn_pending_sel => VcpuInfo, evtchn_pending_sel);
    field!(f, vcpu_info.arch => VcpuInfo, arch);
    field!(f, vcpu_info.time => VcpuInfo, time);
    ty!(f, arch_shared_info, ArchSharedInfo);
    int!(f, arch_shared_info.max_pfn => ArchSharedInfo, max_pfn);
    int!(f, arch_shared_info.pfn_to_mfn_frame_list_list => ArchSharedInfo, pfn_to_mfn_frame_list_list);
    int!(f, arch_shared_info.nmi_reason => ArchSharedInfo, nmi_reason);
    int!(f, arch_shared_info.p2m_cr3 => ArchSharedInfo, p2m_cr3);
    int!(f, arch_shared_info.p2m_vaddr => ArchSharedInfo, p2m_vaddr);
    int!(f, arch_shared_info.p2m_generation => ArchSharedInfo, p2m_generation);
    ty!(f, shared_info, SharedInfo);
    field!(f, shared_info.vcpu_info => SharedInfo, vcpu_info);
    field!(f, shared_info.evtchn_pending => SharedInfo, evtchn_pending);
    field!(f, shared_info.evtchn_mask => SharedInfo, evtchn_mask);
    int!(f, shared_info.wc_version => SharedInfo, wc_version);
    int!(f, shared_info.wc_sec => SharedInfo, wc_sec);
    int!(f, shared_info.wc_nsec => SharedInfo, wc_nsec);
    int!(f, shared_info.wc_sec_hi => SharedInfo, wc_sec_hi);
    field!(f, shared_info.arch => SharedInfo, arch);
    ty!(f, trap_info, TrapInfo);
    int!(f, trap_info.vector => TrapInfo, vector);
    int!(f, trap_info.flags => TrapInfo, flags);
    int!(f, trap_info.cs => TrapInfo, cs);
    int!(f, trap_info.address => TrapInfo, address);
    f.add("TI_SET_IF(1).flags", i64::from(TI_MASK_EVENTS));
    f.add("TI_GET_DPL(0xff)", i64::from(TI_DPL_MASK));
    k!(f, FLAT_KERNEL_CS => FLAT_KERNEL_CS);
    k!(f, FLAT_KERNEL_SS => FLAT_KERNEL_SS);
    // Above i64::MAX: compared as the C side's (long long) cast gives it.
    f.add("MACH2PHYS_VIRT_START", MACH2PHYS_VIRT_START as i64);
    k!(f, MMU_NORMAL_PT_UPDATE => MMU_NORMAL_PT_UPDATE);
    k!(f, MMU_MACHPHYS_UPDATE => MMU_MACHPHYS_UPDATE);
    k!(f, MMU_PT_UPDATE_PRESERVE_AD => MMU_PT_UPDATE_PRESERVE_AD);
    ty!(f, mmu_update, MmuUpdate);
    int!(f, mmu_update.ptr => MmuUpdate, ptr);
    int!(f, mmu_update.val => MmuUpdate, val);
    k!(f, MMUEXT_PIN_L1_TABLE => MMUEXT_PIN_L1_TABLE);
    k!(f, MMUEXT_PIN_L2_TABLE => MMUEXT_PIN_L2_TABLE);
    k!(f, MMUEXT_PIN_L3_TABLE => MMUEXT_PIN_L3_TABLE);
    k!(f, MMUEXT_PIN_L4_TABLE => MMUEXT_PIN_L4_TABLE);
    k!(f, MMUEXT_UNPIN_TABLE => MMUEXT_UNPIN_TABLE);
    k!(f, MMUEXT_NEW_BASEPTR => MMUEXT_NEW_BASEPTR);
    k!(f, MMUEXT_TLB_FLUSH_LOCAL => MMUEXT_TLB_FLUSH_LOCAL);
    k!(f, MMUEXT_INVLPG_LOCAL => MMUEXT_INVLPG_LOCAL);
    k!(f, MMUEXT_TLB_FLUSH_ALL => MMUEXT_TLB_FLUSH_ALL);
    k!(f, MMUEXT_INVLPG_ALL => MMUEXT_INVLPG_ALL);
    k!(f, MMUEXT_CLEAR_PAGE => MMUEXT_CLEAR_PAGE);
    k!(f, MMUEXT_COPY_PAGE => MMUEXT_COPY_PAGE);
    ty!(f, mmuext_op, MmuextOp);
    int!(f, mmuext_op.cmd => MmuextOp, cmd);
    field!(f, mmuext_op.arg1 => MmuextOp, arg1);
    field!(f, mmuext_op.arg2 => MmuextOp, arg2);
    k!(f, UVMF_NONE => UVMF_NONE);
    k!(f, UVMF_TLB_FLUSH => UVMF_TLB_FLUSH);
    k!(f, UVMF_INVLPG => UVMF_INVLPG);
    k!(f, UVMF_FLUSHTYPE_MASK => UVMF_FLUSHTYPE_MASK);
    k!(f, UVMF_LOCAL => UVMF_LOCAL);
    k!(f, UVMF_ALL => UVMF_ALL);
    k!(f, CONSOLEIO_write => CONSOLEIO_WRITE);
    k!(f, CONSOLEIO_read => CONSOLEIO_READ);
    k!(f, SCHEDOP_yield => SCHEDOP_YIELD);
    k!(f, SCHEDOP_block => SCHEDOP_BLOCK);
    k!(f, SCHEDOP_shutdown => SCHEDOP_SHUTDOWN);
    k!(f, SCHEDOP_poll => SCHEDOP_POLL);
    k!(f, SHUTDOWN_poweroff => SHUTDOWN_POWEROFF);
    k!(f, SHUTDOWN_reboot => SHUTDOWN_REBOOT);
    k!(f, SHUTDOWN_suspend => SHUTDOWN_SUSPEND);
    k!(f, SHUTDOWN_crash => SHUTDOWN_CRASH);
    k!(f, SHUTDOWN_watchdog => SHUTDOWN_WATCHDOG);
    ty!(f, sched_shutdown, SchedShutdown);
    int!(f, sched_shutdown.reason => SchedShutdown, reason);
    k!(f, XENVER_version => XENVER_VERSION);
    k!(f, XENVER_extraversion => XENVER_EXTRAVERSION);
    k!(f, XENVER_capabilities => XENVER_CAPABILITIES);
    k!(f, XENVER_get_features => XENVER_GET_FEATURES);
    k!(f, XENVER_pagesize => XENVER_PAGESIZE);
    k!(f, VCPUOP_up => VCPUOP_UP);
    k!(f, VCPUOP_down => VCPUOP_DOWN);
    k!(f, VCPUOP_is_up => VCPUOP_IS_UP);
    k!(f, VCPUOP_set_periodic_timer => VCPUOP_SET_PERIODIC_TIMER);
    k!(f, VCPUOP_stop_periodic_timer => VCPUOP_STOP_PERIODIC_TIMER);
    k!(f, VCPUOP_set_singleshot_timer => VCPUOP_SET_SINGLESHOT_TIMER);
    k!(f, VCPUOP_stop_singleshot_timer => VCPUOP_STOP_SINGLESHOT_TIMER);
    k!(f, VCPUOP_register_vcpu_info => VCPUOP_REGISTER_VCPU_INFO);

    // elfnote.h
    k!(f, XEN_ELFNOTE_INFO => elfnote::ELFNOTE_INFO);
    k!(f, XEN_ELFNOTE_ENTRY => elfnote::ELFNOTE_ENTRY);
    k!(f, XEN_ELFNOTE_HYPERCALL_PAGE => elfnote::ELFNOTE_HYPERCALL_PAGE);
    k!(f, XEN_ELFNOTE_VIRT_BASE => elfnote::ELFNOTE_VIRT_BASE);
    k!(f, XEN_ELFNOTE_PADDR_OFFSET => elfnote::ELFNOTE_PADDR_OFFSET);
    k!(f, XEN_ELFNOTE_XEN_VERSION => elfnote::ELFNOTE_XEN_VERSION);
    k!(f, XEN_ELFNOTE_GUEST_OS => elfnote::ELFNOTE_GUEST_OS);
    k!(f, XEN_ELFNOTE_GUEST_VERSION => elfnote::ELFNOTE_GUEST_VERSION);
    k!(f, XEN_ELFNOTE_LOADER => elfnote::ELFNOTE_LOADER);
    k!(f, XEN_ELFNOTE_PAE_MODE => elfnote::ELFNOTE_PAE_MODE);
    k!(f, XEN_ELFNOTE_FEATURES => elfnote::ELFNOTE_FEATURES);
    k!(f, XEN_ELFNOTE_MOD_START_PFN => elfnote::ELFNOTE_MOD_START_PFN);
    k!(f, XEN_ELFNOTE_SUPPORTED_FEATURES => elfnote::ELFNOTE_SUPPORTED_FEATURES);
    k!(f, XEN_ELFNOTE_PHYS32_ENTRY => elfnote::ELFNOTE_PHYS32_ENTRY);

    // arch-x86/hvm/start_info.h
    k!(f, XEN_HVM_START_MAGIC_VALUE => HVM_START_MAGIC_VALUE);
    k!(f, XEN_HVM_MEMMAP_TYPE_RAM => HVM_MEMMAP_TYPE_RAM);
    k!(f, XEN_HVM_MEMMAP_TYPE_RESERVED => HVM_MEMMAP_TYPE_RESERVED);
    k!(f, XEN_HVM_MEMMAP_TYPE_ACPI => HVM_MEMMAP_TYPE_ACPI);
    k!(f, XEN_HVM_MEMMAP_TYPE_NVS => HVM_MEMMAP_TYPE_NVS);
    k!(f, XEN_HVM_MEMMAP_TYPE_UNUSABLE => HVM_MEMMAP_TYPE_UNUSABLE);
    ty!(f, hvm_start_info, HvmStartInfo);
    int!(f, hvm_start_info.magic => HvmStartInfo, magic);
    int!(f, hvm_start_info.version => HvmStartInfo, version);
    int!(f, hvm_start_info.flags => HvmStartInfo, flags);
    int!(f, hvm_start_info.nr_modules => HvmStartInfo, nr_modules);
    int!(f, hvm_start_info.modlist_paddr => HvmStartInfo, modlist_paddr);
    int!(f, hvm_start_info.cmdline_paddr => HvmStartInfo, cmdline_paddr);
    int!(f, hvm_start_info.rsdp_paddr => HvmStartInfo, rsdp_paddr);
    int!(f, hvm_start_info.memmap_paddr => HvmStartInfo, memmap_paddr);
    int!(f, hvm_start_info.memmap_entries => HvmStartInfo, memmap_entries);
    int!(f, hvm_start_info.reserved => HvmStartInfo, reserved);
    ty!(f, hvm_modlist_entry, HvmModlistEntry);
    int!(f, hvm_modlist_entry.paddr => HvmModlistEntry, paddr);
    int!(f, hvm_modlist_entry.size => HvmModlistEntry, size);
    int!(f, hvm_modlist_entry.cmdline_paddr => HvmModlistEntry, cmdline_paddr);
    int!(f, hvm_modlist_entry.reserved => HvmModlistEntry, reserved);
    ty!(f, hvm_memmap_table_entry, HvmMemmapTableEntry);
    int!(f, hvm_memmap_table_entry.addr => HvmMemmapTableEntry, addr);
    int!(f, hvm_memmap_table_entry.size => HvmMemmapTableEntry, size);
    int!(f, hvm_memmap_table_entry.type => HvmMemmapTableEntry, type_);
    int!(f, hvm_memmap_table_entry.reserved => HvmMemmapTableEntry, reserved);
}

/// `xen/sys/gntdev.h` and `xen/sys/evtchn.h` against `pvkit_backends::xen::sys`.
fn dom0_ioctl_facts(f: &mut Facts) {
    use sys::{GntdevCopyForeign, GntdevCopyPtr, GntdevGrantCopySegment as Segment};

    // sys/gntdev.h
    ty!(f, ioctl_gntdev_grant_ref, sys::GntdevGrantRef);
    int!(f, ioctl_gntdev_grant_ref.domid => sys::GntdevGrantRef, domid);
    int!(f, ioctl_gntdev_grant_ref.ref => sys::GntdevGrantRef, gref);
    // The C struct ends in `refs[1]`; pvkit's header is that struct without the array, and the
    // grants follow it in memory. So the C struct is exactly one header plus one grant.
    type Header = sys::GntdevMapGrantRefHeader;
    let header = size_of::<Header>();
    let grant = size_of::<sys::GntdevGrantRef>();
    f.add("sizeof(ioctl_gntdev_map_grant_ref)", (header + grant) as i64);
    f.add(
        "alignof(ioctl_gntdev_map_grant_ref)",
        align_of::<Header>().max(align_of::<sys::GntdevGrantRef>()) as i64,
    );
    int!(f, ioctl_gntdev_map_grant_ref.count => Header, count);
    int!(f, ioctl_gntdev_map_grant_ref.pad => Header, pad);
    int!(f, ioctl_gntdev_map_grant_ref.index => Header, index);
    f.add("offsetof(ioctl_gntdev_map_grant_ref.refs)", header as i64);
    f.add("sizeof(ioctl_gntdev_map_grant_ref.refs)", grant as i64);
    ty!(f, ioctl_gntdev_unmap_grant_ref, sys::GntdevUnmapGrantRef);
    int!(f, ioctl_gntdev_unmap_grant_ref.index => sys::GntdevUnmapGrantRef, index);
    int!(f, ioctl_gntdev_unmap_grant_ref.count => sys::GntdevUnmapGrantRef, count);
    int!(f, ioctl_gntdev_unmap_grant_ref.pad => sys::GntdevUnmapGrantRef, pad);
    ty!(f, ioctl_gntdev_set_max_grants, sys::GntdevSetMaxGrants);
    int!(f, ioctl_gntdev_set_max_grants.count => sys::GntdevSetMaxGrants, count);
    ty!(f, ioctl_gntdev_grant_copy_segment, Segment);
    // `source` and `dest` have the same anonymous union type, GntdevCopyPtr in Rust, whose
    // `foreign` member is an anonymous struct, GntdevCopyForeign in Rust.
    f.add(
        "alignof(ioctl_gntdev_grant_copy_segment.source)",
        align_of::<GntdevCopyPtr>() as i64,
    );
    f.add(
        "alignof(ioctl_gntdev_grant_copy_segment.source.foreign)",
        align_of::<GntdevCopyForeign>() as i64,
    );
    macro_rules! side {
        ($c:literal, $r:ident) => {
            f.add(
                concat!("offsetof(ioctl_gntdev_grant_copy_segment.", $c, ")"),
                offset_of!(Segment, $r) as i64,
            );
            f.add(
                concat!("sizeof(ioctl_gntdev_grant_copy_segment.", $c, ")"),
                field_size(|s: &Segment| &s.$r) as i64,
            );
            f.add(
                concat!("offsetof(ioctl_gntdev_grant_copy_segment.", $c, ".virt)"),
                offset_of!(Segment, $r.virt) as i64,
            );
            f.add(
                concat!("sizeof(ioctl_gntdev_grant_copy_segment.", $c, ".virt)"),
                // SAFETY: never called (see `member_size`), so no union member is read.
                member_size(|p: GntdevCopyPtr| unsafe { p.virt }) as i64,
            );
            f.add(
                concat!("offsetof(ioctl_gntdev_grant_copy_segment.", $c, ".foreign)"),
                offset_of!(Segment, $r.foreign) as i64,
            );
            f.add(
                concat!("sizeof(ioctl_gntdev_grant_copy_segment.", $c, ".foreign)"),
                // SAFETY: never called (see `member_size`), so no union member is read.
                member_size(|p: GntdevCopyPtr| unsafe { p.foreign }) as i64,
            );
            side!(@int $c, $r, "ref", gref);
            side!(@int $c, $r, "offset", offset);
            side!(@int $c, $r, "domid", domid);
        };
        (@int $c:literal, $r:ident, $cf:literal, $rf:ident) => {
            f.add(
                concat!("offsetof(ioctl_gntdev_grant_copy_segment.", $c, ".foreign.", $cf, ")"),
                offset_of!(Segment, $r.foreign.$rf) as i64,
            );
            f.add(
                concat!("sizeof(ioctl_gntdev_grant_copy_segment.", $c, ".foreign.", $cf, ")"),
                field_size(|s: &GntdevCopyForeign| &s.$rf) as i64,
            );
            f.add(
                concat!("signed(ioctl_gntdev_grant_copy_segment.", $c, ".foreign.", $cf, ")"),
                field_signed(|s: &GntdevCopyForeign| &s.$rf) as i64,
            );
        };
    }
    side!("source", source);
    side!("dest", dest);
    int!(f, ioctl_gntdev_grant_copy_segment.len => Segment, len);
    int!(f, ioctl_gntdev_grant_copy_segment.flags => Segment, flags);
    int!(f, ioctl_gntdev_grant_copy_segment.status => Segment, status);
    ty!(f, ioctl_gntdev_grant_copy, sys::GntdevGrantCopy);
    int!(f, ioctl_gntdev_grant_copy.count => sys::GntdevGrantCopy, count);
    field!(f, ioctl_gntdev_grant_copy.segments => sys::GntdevGrantCopy, segments);
    k!(f, IOCTL_GNTDEV_MAP_GRANT_REF => sys::IOCTL_GNTDEV_MAP_GRANT_REF);
    k!(f, IOCTL_GNTDEV_UNMAP_GRANT_REF => sys::IOCTL_GNTDEV_UNMAP_GRANT_REF);
    k!(f, IOCTL_GNTDEV_SET_MAX_GRANTS => sys::IOCTL_GNTDEV_SET_MAX_GRANTS);
    k!(f, IOCTL_GNTDEV_GRANT_COPY => sys::IOCTL_GNTDEV_GRANT_COPY);

    // sys/evtchn.h
    ty!(f, ioctl_evtchn_bind_interdomain, sys::EvtchnBindInterdomain);
    int!(f, ioctl_evtchn_bind_interdomain.remote_domain => sys::EvtchnBindInterdomain, remote_domain);
    int!(f, ioctl_evtchn_bind_interdomain.remote_port => sys::EvtchnBindInterdomain, remote_port);
    // One Rust type serves both one-port requests.
    ty!(f, ioctl_evtchn_unbind, sys::EvtchnPortArg);
    int!(f, ioctl_evtchn_unbind.port => sys::EvtchnPortArg, port);
    ty!(f, ioctl_evtchn_notify, sys::EvtchnPortArg);
    int!(f, ioctl_evtchn_notify.port => sys::EvtchnPortArg, port);
    k!(f, IOCTL_EVTCHN_BIND_INTERDOMAIN => sys::IOCTL_EVTCHN_BIND_INTERDOMAIN);
    k!(f, IOCTL_EVTCHN_UNBIND => sys::IOCTL_EVTCHN_UNBIND);
    k!(f, IOCTL_EVTCHN_NOTIFY => sys::IOCTL_EVTCHN_NOTIFY);
}

/// Every mismatch between the C and the Rust facts (a value that differs, or a fact only one side
/// lists), and the C facts as a map.
fn compare(c: Vec<(String, i64)>, rust: Facts) -> (Vec<String>, BTreeMap<String, i64>) {
    let mut c_map = BTreeMap::new();
    for (name, value) in &c {
        assert!(
            c_map.insert(name.clone(), *value).is_none(),
            "C fact {name} listed twice"
        );
    }
    let rust = rust.0;
    let mut problems = Vec::new();
    for (name, cv) in &c_map {
        match rust.get(name) {
            None => problems.push(format!("{name}: C says {cv}, Rust side does not check it")),
            Some(rv) if rv != cv => problems.push(format!("{name}: C says {cv}, Rust says {rv}")),
            Some(_) => {}
        }
    }
    for (name, rv) in &rust {
        if !c_map.contains_key(name) {
            problems.push(format!("{name}: Rust says {rv}, C side does not list it"));
        }
    }
    (problems, c_map)
}

/// (sizes, alignments, offsets, signedness) entries among `facts`.
fn kinds(facts: &BTreeMap<String, i64>) -> (usize, usize, usize, usize) {
    let count = |prefix: &str| facts.keys().filter(|k| k.starts_with(prefix)).count();
    (
        count("sizeof("),
        count("alignof("),
        count("offsetof("),
        count("signed("),
    )
}

#[test]
fn every_size_offset_and_constant_matches_the_system_xen_headers() {
    let (problems, c_map) = compare(layout::facts(), rust_facts());
    assert!(
        problems.is_empty(),
        "{} ABI mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let (sizes, aligns, offsets, signs) = kinds(&c_map);
    println!(
        "checked {} facts against /usr/include/xen: {sizes} sizes ({} types + {} fields/typedefs), {aligns} \
         alignments, {offsets} field offsets, {signs} signedness, {} constants",
        c_map.len(),
        aligns,
        sizes - aligns,
        c_map.len() - sizes - aligns - offsets - signs,
    );
    // The table must really cover the ABI: at least one size per struct pvkit defines.
    assert!(aligns >= 50, "only {aligns} types checked");
}

/// `ring_protocol::abi::virtio` as facts named like `tests/c/virtio_layout.c`'s.
fn virtio_facts() -> Facts {
    let mut f = Facts::default();
    /// Size only: the Rust types have alignment 1 by design (see virtio_layout.c).
    macro_rules! size {
        ($c:ident, $t:ty) => {
            f.add(
                concat!("sizeof(", stringify!($c), ")"),
                size_of::<$t>() as i64,
            );
        };
    }
    /// The offset of a trailing flexible array: where the Rust header type ends.
    macro_rules! tail {
        ($c:ident . $cf:ident => $t:ty) => {
            f.add(
                concat!("offsetof(", stringify!($c), ".", stringify!($cf), ")"),
                size_of::<$t>() as i64,
            );
        };
    }

    // virtio_config.h
    k!(f, VIRTIO_CONFIG_S_ACKNOWLEDGE => VIRTIO_CONFIG_S_ACKNOWLEDGE);
    k!(f, VIRTIO_CONFIG_S_DRIVER => VIRTIO_CONFIG_S_DRIVER);
    k!(f, VIRTIO_CONFIG_S_DRIVER_OK => VIRTIO_CONFIG_S_DRIVER_OK);
    k!(f, VIRTIO_CONFIG_S_FEATURES_OK => VIRTIO_CONFIG_S_FEATURES_OK);
    k!(f, VIRTIO_CONFIG_S_NEEDS_RESET => VIRTIO_CONFIG_S_NEEDS_RESET);
    k!(f, VIRTIO_CONFIG_S_FAILED => VIRTIO_CONFIG_S_FAILED);
    k!(f, VIRTIO_F_ANY_LAYOUT => VIRTIO_F_ANY_LAYOUT);
    k!(f, VIRTIO_F_VERSION_1 => VIRTIO_F_VERSION_1);
    k!(f, VIRTIO_F_ACCESS_PLATFORM => VIRTIO_F_ACCESS_PLATFORM);
    k!(f, VIRTIO_F_RING_PACKED => VIRTIO_F_RING_PACKED);
    k!(f, VIRTIO_F_IN_ORDER => VIRTIO_F_IN_ORDER);

    // virtio_ring.h
    k!(f, VIRTIO_RING_F_INDIRECT_DESC => VIRTIO_RING_F_INDIRECT_DESC);
    k!(f, VIRTIO_RING_F_EVENT_IDX => VIRTIO_RING_F_EVENT_IDX);
    k!(f, VRING_DESC_F_NEXT => VRING_DESC_F_NEXT);
    k!(f, VRING_DESC_F_WRITE => VRING_DESC_F_WRITE);
    k!(f, VRING_DESC_F_INDIRECT => VRING_DESC_F_INDIRECT);
    k!(f, VRING_USED_F_NO_NOTIFY => VRING_USED_F_NO_NOTIFY);
    k!(f, VRING_AVAIL_F_NO_INTERRUPT => VRING_AVAIL_F_NO_INTERRUPT);
    k!(f, VRING_DESC_ALIGN_SIZE => VRING_DESC_ALIGN_SIZE);
    k!(f, VRING_AVAIL_ALIGN_SIZE => VRING_AVAIL_ALIGN_SIZE);
    k!(f, VRING_USED_ALIGN_SIZE => VRING_USED_ALIGN_SIZE);
    size!(vring_desc, VirtqDesc);
    int!(f, vring_desc.addr => VirtqDesc, addr);
    int!(f, vring_desc.len => VirtqDesc, len);
    int!(f, vring_desc.flags => VirtqDesc, flags);
    int!(f, vring_desc.next => VirtqDesc, next);
    size!(vring_avail, VirtqAvail);
    int!(f, vring_avail.flags => VirtqAvail, flags);
    int!(f, vring_avail.idx => VirtqAvail, idx);
    tail!(vring_avail.ring => VirtqAvail);
    size!(vring_used_elem, VirtqUsedElem);
    int!(f, vring_used_elem.id => VirtqUsedElem, id);
    int!(f, vring_used_elem.len => VirtqUsedElem, len);
    size!(vring_used, VirtqUsed);
    int!(f, vring_used.flags => VirtqUsed, flags);
    int!(f, vring_used.idx => VirtqUsed, idx);
    tail!(vring_used.ring => VirtqUsed);
    for n in [8u16, 128, 256] {
        f.add(
            &format!("used_event_offset({n})"),
            VirtqAvail::used_event_offset(n) as i64,
        );
        f.add(
            &format!("avail_event_offset({n})"),
            VirtqUsed::avail_event_offset(n) as i64,
        );
    }

    // virtio_pci.h
    k!(f, VIRTIO_PCI_CAP_COMMON_CFG => VIRTIO_PCI_CAP_COMMON_CFG);
    k!(f, VIRTIO_PCI_CAP_NOTIFY_CFG => VIRTIO_PCI_CAP_NOTIFY_CFG);
    k!(f, VIRTIO_PCI_CAP_ISR_CFG => VIRTIO_PCI_CAP_ISR_CFG);
    k!(f, VIRTIO_PCI_CAP_DEVICE_CFG => VIRTIO_PCI_CAP_DEVICE_CFG);
    k!(f, VIRTIO_PCI_CAP_PCI_CFG => VIRTIO_PCI_CAP_PCI_CFG);
    k!(f, VIRTIO_MSI_NO_VECTOR => VIRTIO_MSI_NO_VECTOR);
    size!(virtio_pci_cap, VirtioPciCap);
    int!(f, virtio_pci_cap.cap_vndr => VirtioPciCap, cap_vndr);
    int!(f, virtio_pci_cap.cap_next => VirtioPciCap, cap_next);
    int!(f, virtio_pci_cap.cap_len => VirtioPciCap, cap_len);
    int!(f, virtio_pci_cap.cfg_type => VirtioPciCap, cfg_type);
    int!(f, virtio_pci_cap.bar => VirtioPciCap, bar);
    int!(f, virtio_pci_cap.id => VirtioPciCap, id);
    field!(f, virtio_pci_cap.padding => VirtioPciCap, padding);
    int!(f, virtio_pci_cap.offset => VirtioPciCap, offset);
    int!(f, virtio_pci_cap.length => VirtioPciCap, length);
    size!(virtio_pci_notify_cap, VirtioPciNotifyCap);
    field!(f, virtio_pci_notify_cap.cap => VirtioPciNotifyCap, cap);
    int!(f, virtio_pci_notify_cap.notify_off_multiplier => VirtioPciNotifyCap, notify_off_multiplier);
    size!(virtio_pci_common_cfg, VirtioPciCommonCfg);
    int!(f, virtio_pci_common_cfg.device_feature_select => VirtioPciCommonCfg, device_feature_select);
    int!(f, virtio_pci_common_cfg.device_feature => VirtioPciCommonCfg, device_feature);
    int!(f, virtio_pci_common_cfg.guest_feature_select => VirtioPciCommonCfg, guest_feature_select);
    int!(f, virtio_pci_common_cfg.guest_feature => VirtioPciCommonCfg, guest_feature);
    int!(f, virtio_pci_common_cfg.msix_config => VirtioPciCommonCfg, msix_config);
    int!(f, virtio_pci_common_cfg.num_queues => VirtioPciCommonCfg, num_queues);
    int!(f, virtio_pci_common_cfg.device_status => VirtioPciCommonCfg, device_status);
    int!(f, virtio_pci_common_cfg.config_generation => VirtioPciCommonCfg, config_generation);
    int!(f, virtio_pci_common_cfg.queue_select => VirtioPciCommonCfg, queue_select);
    int!(f, virtio_pci_common_cfg.queue_size => VirtioPciCommonCfg, queue_size);
    int!(f, virtio_pci_common_cfg.queue_msix_vector => VirtioPciCommonCfg, queue_msix_vector);
    int!(f, virtio_pci_common_cfg.queue_enable => VirtioPciCommonCfg, queue_enable);
    int!(f, virtio_pci_common_cfg.queue_notify_off => VirtioPciCommonCfg, queue_notify_off);
    int!(f, virtio_pci_common_cfg.queue_desc_lo => VirtioPciCommonCfg, queue_desc_lo);
    int!(f, virtio_pci_common_cfg.queue_desc_hi => VirtioPciCommonCfg, queue_desc_hi);
    int!(f, virtio_pci_common_cfg.queue_avail_lo => VirtioPciCommonCfg, queue_avail_lo);
    int!(f, virtio_pci_common_cfg.queue_avail_hi => VirtioPciCommonCfg, queue_avail_hi);
    int!(f, virtio_pci_common_cfg.queue_used_lo => VirtioPciCommonCfg, queue_used_lo);
    int!(f, virtio_pci_common_cfg.queue_used_hi => VirtioPciCommonCfg, queue_used_hi);

    // virtio_blk.h
    k!(f, VIRTIO_BLK_F_SIZE_MAX => VIRTIO_BLK_F_SIZE_MAX);
    k!(f, VIRTIO_BLK_F_SEG_MAX => VIRTIO_BLK_F_SEG_MAX);
    k!(f, VIRTIO_BLK_F_GEOMETRY => VIRTIO_BLK_F_GEOMETRY);
    k!(f, VIRTIO_BLK_F_RO => VIRTIO_BLK_F_RO);
    k!(f, VIRTIO_BLK_F_BLK_SIZE => VIRTIO_BLK_F_BLK_SIZE);
    k!(f, VIRTIO_BLK_F_FLUSH => VIRTIO_BLK_F_FLUSH);
    k!(f, VIRTIO_BLK_F_TOPOLOGY => VIRTIO_BLK_F_TOPOLOGY);
    k!(f, VIRTIO_BLK_F_CONFIG_WCE => VIRTIO_BLK_F_CONFIG_WCE);
    k!(f, VIRTIO_BLK_F_MQ => VIRTIO_BLK_F_MQ);
    k!(f, VIRTIO_BLK_F_DISCARD => VIRTIO_BLK_F_DISCARD);
    k!(f, VIRTIO_BLK_F_WRITE_ZEROES => VIRTIO_BLK_F_WRITE_ZEROES);
    k!(f, VIRTIO_BLK_F_SECURE_ERASE => VIRTIO_BLK_F_SECURE_ERASE);
    k!(f, VIRTIO_BLK_ID_BYTES => VIRTIO_BLK_ID_BYTES);
    k!(f, VIRTIO_BLK_T_IN => VIRTIO_BLK_T_IN);
    k!(f, VIRTIO_BLK_T_OUT => VIRTIO_BLK_T_OUT);
    k!(f, VIRTIO_BLK_T_FLUSH => VIRTIO_BLK_T_FLUSH);
    k!(f, VIRTIO_BLK_T_GET_ID => VIRTIO_BLK_T_GET_ID);
    k!(f, VIRTIO_BLK_T_DISCARD => VIRTIO_BLK_T_DISCARD);
    k!(f, VIRTIO_BLK_T_WRITE_ZEROES => VIRTIO_BLK_T_WRITE_ZEROES);
    k!(f, VIRTIO_BLK_T_SECURE_ERASE => VIRTIO_BLK_T_SECURE_ERASE);
    k!(f, VIRTIO_BLK_S_OK => VIRTIO_BLK_S_OK);
    k!(f, VIRTIO_BLK_S_IOERR => VIRTIO_BLK_S_IOERR);
    k!(f, VIRTIO_BLK_S_UNSUPP => VIRTIO_BLK_S_UNSUPP);
    k!(f, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    size!(virtio_blk_geometry, VirtioBlkGeometry);
    int!(f, virtio_blk_geometry.cylinders => VirtioBlkGeometry, cylinders);
    int!(f, virtio_blk_geometry.heads => VirtioBlkGeometry, heads);
    int!(f, virtio_blk_geometry.sectors => VirtioBlkGeometry, sectors);
    size!(virtio_blk_config, VirtioBlkConfig);
    int!(f, virtio_blk_config.capacity => VirtioBlkConfig, capacity);
    int!(f, virtio_blk_config.size_max => VirtioBlkConfig, size_max);
    int!(f, virtio_blk_config.seg_max => VirtioBlkConfig, seg_max);
    field!(f, virtio_blk_config.geometry => VirtioBlkConfig, geometry);
    int!(f, virtio_blk_config.blk_size => VirtioBlkConfig, blk_size);
    int!(f, virtio_blk_config.physical_block_exp => VirtioBlkConfig, physical_block_exp);
    int!(f, virtio_blk_config.alignment_offset => VirtioBlkConfig, alignment_offset);
    int!(f, virtio_blk_config.min_io_size => VirtioBlkConfig, min_io_size);
    int!(f, virtio_blk_config.opt_io_size => VirtioBlkConfig, opt_io_size);
    int!(f, virtio_blk_config.wce => VirtioBlkConfig, wce);
    int!(f, virtio_blk_config.unused => VirtioBlkConfig, unused);
    int!(f, virtio_blk_config.num_queues => VirtioBlkConfig, num_queues);
    int!(f, virtio_blk_config.max_discard_sectors => VirtioBlkConfig, max_discard_sectors);
    int!(f, virtio_blk_config.max_discard_seg => VirtioBlkConfig, max_discard_seg);
    int!(f, virtio_blk_config.discard_sector_alignment => VirtioBlkConfig, discard_sector_alignment);
    int!(f, virtio_blk_config.max_write_zeroes_sectors => VirtioBlkConfig, max_write_zeroes_sectors);
    int!(f, virtio_blk_config.max_write_zeroes_seg => VirtioBlkConfig, max_write_zeroes_seg);
    int!(f, virtio_blk_config.write_zeroes_may_unmap => VirtioBlkConfig, write_zeroes_may_unmap);
    field!(f, virtio_blk_config.unused1 => VirtioBlkConfig, unused1);
    int!(f, virtio_blk_config.max_secure_erase_sectors => VirtioBlkConfig, max_secure_erase_sectors);
    int!(f, virtio_blk_config.max_secure_erase_seg => VirtioBlkConfig, max_secure_erase_seg);
    int!(f, virtio_blk_config.secure_erase_sector_alignment => VirtioBlkConfig, secure_erase_sector_alignment);
    size!(virtio_blk_outhdr, VirtioBlkOuthdr);
    int!(f, virtio_blk_outhdr.type => VirtioBlkOuthdr, type_);
    int!(f, virtio_blk_outhdr.ioprio => VirtioBlkOuthdr, ioprio);
    int!(f, virtio_blk_outhdr.sector => VirtioBlkOuthdr, sector);
    size!(virtio_blk_discard_write_zeroes, VirtioBlkDiscardWriteZeroes);
    int!(f, virtio_blk_discard_write_zeroes.sector => VirtioBlkDiscardWriteZeroes, sector);
    int!(f, virtio_blk_discard_write_zeroes.num_sectors => VirtioBlkDiscardWriteZeroes, num_sectors);
    int!(f, virtio_blk_discard_write_zeroes.flags => VirtioBlkDiscardWriteZeroes, flags);

    // virtio_net.h
    k!(f, VIRTIO_NET_F_CSUM => VIRTIO_NET_F_CSUM);
    k!(f, VIRTIO_NET_F_GUEST_CSUM => VIRTIO_NET_F_GUEST_CSUM);
    k!(f, VIRTIO_NET_F_MTU => VIRTIO_NET_F_MTU);
    k!(f, VIRTIO_NET_F_MAC => VIRTIO_NET_F_MAC);
    k!(f, VIRTIO_NET_F_MRG_RXBUF => VIRTIO_NET_F_MRG_RXBUF);
    k!(f, VIRTIO_NET_F_STATUS => VIRTIO_NET_F_STATUS);
    k!(f, VIRTIO_NET_F_CTRL_VQ => VIRTIO_NET_F_CTRL_VQ);
    k!(f, VIRTIO_NET_F_MQ => VIRTIO_NET_F_MQ);
    k!(f, VIRTIO_NET_S_LINK_UP => VIRTIO_NET_S_LINK_UP);
    k!(f, VIRTIO_NET_S_ANNOUNCE => VIRTIO_NET_S_ANNOUNCE);
    k!(f, VIRTIO_NET_HDR_F_NEEDS_CSUM => VIRTIO_NET_HDR_F_NEEDS_CSUM);
    k!(f, VIRTIO_NET_HDR_F_DATA_VALID => VIRTIO_NET_HDR_F_DATA_VALID);
    k!(f, VIRTIO_NET_HDR_GSO_NONE => VIRTIO_NET_HDR_GSO_NONE);
    k!(f, VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_HDR_GSO_TCPV4);
    k!(f, VIRTIO_NET_HDR_GSO_UDP => VIRTIO_NET_HDR_GSO_UDP);
    k!(f, VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_HDR_GSO_TCPV6);
    k!(f, VIRTIO_NET_HDR_GSO_ECN => VIRTIO_NET_HDR_GSO_ECN);
    size!(virtio_net_config, VirtioNetConfig);
    field!(f, virtio_net_config.mac => VirtioNetConfig, mac);
    int!(f, virtio_net_config.status => VirtioNetConfig, status);
    int!(f, virtio_net_config.max_virtqueue_pairs => VirtioNetConfig, max_virtqueue_pairs);
    int!(f, virtio_net_config.mtu => VirtioNetConfig, mtu);
    int!(f, virtio_net_config.speed => VirtioNetConfig, speed);
    int!(f, virtio_net_config.duplex => VirtioNetConfig, duplex);
    int!(f, virtio_net_config.rss_max_key_size => VirtioNetConfig, rss_max_key_size);
    int!(f, virtio_net_config.rss_max_indirection_table_length => VirtioNetConfig, rss_max_indirection_table_length);
    int!(f, virtio_net_config.supported_hash_types => VirtioNetConfig, supported_hash_types);
    size!(virtio_net_hdr, VirtioNetHdr);
    int!(f, virtio_net_hdr.flags => VirtioNetHdr, flags);
    int!(f, virtio_net_hdr.gso_type => VirtioNetHdr, gso_type);
    int!(f, virtio_net_hdr.hdr_len => VirtioNetHdr, hdr_len);
    int!(f, virtio_net_hdr.gso_size => VirtioNetHdr, gso_size);
    int!(f, virtio_net_hdr.csum_start => VirtioNetHdr, csum_start);
    int!(f, virtio_net_hdr.csum_offset => VirtioNetHdr, csum_offset);
    size!(virtio_net_hdr_v1, VirtioNetHdrV1);
    int!(f, virtio_net_hdr_v1.flags => VirtioNetHdrV1, flags);
    int!(f, virtio_net_hdr_v1.gso_type => VirtioNetHdrV1, gso_type);
    int!(f, virtio_net_hdr_v1.hdr_len => VirtioNetHdrV1, hdr_len);
    int!(f, virtio_net_hdr_v1.gso_size => VirtioNetHdrV1, gso_size);
    int!(f, virtio_net_hdr_v1.csum_start => VirtioNetHdrV1, csum_start);
    int!(f, virtio_net_hdr_v1.csum_offset => VirtioNetHdrV1, csum_offset);
    int!(f, virtio_net_hdr_v1.num_buffers => VirtioNetHdrV1, num_buffers);
    f
}

#[test]
fn every_virtio_size_offset_and_constant_matches_the_linux_uapi_headers() {
    let (problems, c_map) = compare(layout::virtio_facts(), virtio_facts());
    assert!(
        problems.is_empty(),
        "{} virtio ABI mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let (sizes, _, offsets, signs) = kinds(&c_map);
    println!(
        "checked {} facts against /usr/include/linux/virtio_*.h: {sizes} sizes, {offsets} field offsets, \
         {signs} signedness, {} constants and ring offsets",
        c_map.len(),
        c_map.len() - sizes - offsets - signs,
    );
    // One size per virtio type pvkit defines.
    let types = c_map
        .keys()
        .filter(|k| k.starts_with("sizeof(") && !k.contains('.'))
        .count();
    assert!(types >= 14, "only {types} virtio types checked");
}

#[test]
fn string_constants_match_the_system_xen_headers() {
    let c: BTreeMap<String, String> = layout::str_facts().into_iter().collect();
    let rust: BTreeMap<String, String> = [
        ("XS_WRITE_NONE", XS_WRITE_NONE),
        ("XS_WRITE_CREATE", XS_WRITE_CREATE),
        ("XS_WRITE_CREATE_EXCL", XS_WRITE_CREATE_EXCL),
        ("XEN_IO_PROTO_ABI_X86_64", XEN_IO_PROTO_ABI_X86_64),
        // The layouts in ring_protocol::abi are the x86_64 ones, so that must be the native ABI.
        ("XEN_IO_PROTO_ABI_NATIVE", XEN_IO_PROTO_ABI_X86_64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(c, rust);
}

#[test]
fn xenstore_error_table_matches_xs_wire_h() {
    let c = layout::xsd_errors();
    let rust: Vec<(i32, String)> = XSD_ERRORS.iter().map(|e| (e.errnum, e.name.to_owned())).collect();
    // The C table holds this host's errno values; on Linux they are Xen's (checked against
    // xen/errno.h in the layout test), so the whole table must be identical, in order.
    assert_eq!(c, rust);
    assert_eq!(c.len(), 16);
}
