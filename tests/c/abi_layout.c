/*
 * Layout facts of the Xen public ABI, as the C compiler sees them through the SYSTEM headers
 * (/usr/include/xen, Debian's libxen-dev). pvkit-tests compares every entry with ring_protocol::abi,
 * and the dom0 device ioctls (xen/sys/gntdev.h, xen/sys/evtchn.h) with pvkit_backends::xen::sys.
 *
 * Entry names:  sizeof(T) / alignof(T) / offsetof(T.f) / sizeof(T.f) / signed(T.f)  for struct T,
 *               or the C name of a constant.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00 /* the latest interface a current guest asks for */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h> /* _IOC, which the xen/sys headers use but do not include */

#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>
#include <xen/io/protocols.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/elfnote.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/sys/gntdev.h>
#include <xen/sys/evtchn.h>

struct pv_fact {
    const char *name;
    long long value;
};

struct pv_str_fact {
    const char *name;
    const char *value;
};

#define TYPE(t) \
    { "sizeof(" #t ")", (long long)sizeof(struct t) }, \
    { "alignof(" #t ")", (long long)_Alignof(struct t) }
#define FIELD(t, f) \
    { "offsetof(" #t "." #f ")", (long long)offsetof(struct t, f) }, \
    { "sizeof(" #t "." #f ")", (long long)sizeof(((struct t *)0)->f) }
/* An integer field: also whether its type is signed. */
#define INT(t, f) \
    FIELD(t, f), \
    { "signed(" #t "." #f ")", (long long)((__typeof__(((struct t *)0)->f))-1 < (__typeof__(((struct t *)0)->f))1) }
#define K(c) { #c, (long long)(c) }
/* The alignment of a member whose type has no name (an anonymous struct or union). */
#define ANON_ALIGN(t, f) \
    { "alignof(" #t "." #f ")", (long long)_Alignof(__typeof__(((struct t *)0)->f)) }

static const struct pv_fact pv_abi_facts[] = {
    /* xen.h, io/ring.h */
    K(DOMID_FIRST_RESERVED), K(DOMID_SELF), K(DOMID_IO), K(DOMID_XEN), K(DOMID_COW),
    K(DOMID_INVALID), K(DOMID_IDLE),
    { "sizeof(domid_t)", (long long)sizeof(domid_t) },
    { "sizeof(xen_pfn_t)", (long long)sizeof(xen_pfn_t) },
    K(XEN_PAGE_SHIFT),
    K(__HYPERVISOR_set_trap_table), K(__HYPERVISOR_mmu_update), K(__HYPERVISOR_set_gdt),
    K(__HYPERVISOR_stack_switch), K(__HYPERVISOR_set_callbacks), K(__HYPERVISOR_fpu_taskswitch),
    K(__HYPERVISOR_sched_op_compat), K(__HYPERVISOR_platform_op), K(__HYPERVISOR_set_debugreg),
    K(__HYPERVISOR_get_debugreg), K(__HYPERVISOR_update_descriptor), K(__HYPERVISOR_memory_op),
    K(__HYPERVISOR_multicall), K(__HYPERVISOR_update_va_mapping), K(__HYPERVISOR_set_timer_op),
    K(__HYPERVISOR_event_channel_op_compat), K(__HYPERVISOR_xen_version),
    K(__HYPERVISOR_console_io), K(__HYPERVISOR_physdev_op_compat), K(__HYPERVISOR_grant_table_op),
    K(__HYPERVISOR_vm_assist), K(__HYPERVISOR_update_va_mapping_otherdomain), K(__HYPERVISOR_iret),
    K(__HYPERVISOR_vcpu_op), K(__HYPERVISOR_set_segment_base), K(__HYPERVISOR_mmuext_op),
    K(__HYPERVISOR_xsm_op), K(__HYPERVISOR_nmi_op), K(__HYPERVISOR_sched_op),
    K(__HYPERVISOR_callback_op), K(__HYPERVISOR_xenoprof_op), K(__HYPERVISOR_event_channel_op),
    K(__HYPERVISOR_physdev_op), K(__HYPERVISOR_hvm_op), K(__HYPERVISOR_sysctl),
    K(__HYPERVISOR_domctl), K(__HYPERVISOR_kexec_op), K(__HYPERVISOR_tmem_op),
    K(__HYPERVISOR_argo_op), K(__HYPERVISOR_xenpmu_op), K(__HYPERVISOR_dm_op),
    K(__HYPERVISOR_hypfs_op),
    K(VIRQ_TIMER), K(VIRQ_DEBUG), K(VIRQ_CONSOLE),

    /* The x86_64 PV guest ABI: xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h */
    K(MAX_GUEST_CMDLINE), K(SIF_PRIVILEGED), K(SIF_INITDOMAIN), K(SIF_MULTIBOOT_MOD),
    K(SIF_MOD_START_PFN), K(SIF_VIRT_P2M_4TOOLS),
    TYPE(start_info), FIELD(start_info, magic), INT(start_info, nr_pages),
    INT(start_info, shared_info), INT(start_info, flags), INT(start_info, store_mfn),
    INT(start_info, store_evtchn), INT(start_info, console.domU.mfn),
    INT(start_info, console.domU.evtchn), INT(start_info, console.dom0.info_off),
    INT(start_info, console.dom0.info_size), INT(start_info, pt_base),
    INT(start_info, nr_pt_frames), INT(start_info, mfn_list), INT(start_info, mod_start),
    INT(start_info, mod_len), FIELD(start_info, cmd_line), INT(start_info, first_p2m_pfn),
    INT(start_info, nr_p2m_frames),
    K(XEN_LEGACY_MAX_VCPUS), K(EVTCHN_2L_NR_CHANNELS),
    K(XEN_PVCLOCK_TSC_STABLE_BIT), K(XEN_PVCLOCK_GUEST_STOPPED),
    TYPE(vcpu_time_info), INT(vcpu_time_info, version), INT(vcpu_time_info, pad0),
    INT(vcpu_time_info, tsc_timestamp), INT(vcpu_time_info, system_time),
    INT(vcpu_time_info, tsc_to_system_mul), INT(vcpu_time_info, tsc_shift),
    INT(vcpu_time_info, flags), FIELD(vcpu_time_info, pad1),
    TYPE(arch_vcpu_info), INT(arch_vcpu_info, cr2), INT(arch_vcpu_info, pad),
    TYPE(vcpu_info), INT(vcpu_info, evtchn_upcall_pending), INT(vcpu_info, evtchn_upcall_mask),
    INT(vcpu_info, evtchn_pending_sel), FIELD(vcpu_info, arch), FIELD(vcpu_info, time),
    TYPE(arch_shared_info), INT(arch_shared_info, max_pfn),
    INT(arch_shared_info, pfn_to_mfn_frame_list_list), INT(arch_shared_info, nmi_reason),
    INT(arch_shared_info, p2m_cr3), INT(arch_shared_info, p2m_vaddr),
    INT(arch_shared_info, p2m_generation),
    TYPE(shared_info), FIELD(shared_info, vcpu_info), FIELD(shared_info, evtchn_pending),
    FIELD(shared_info, evtchn_mask), INT(shared_info, wc_version), INT(shared_info, wc_sec),
    INT(shared_info, wc_nsec), INT(shared_info, wc_sec_hi), FIELD(shared_info, arch),
    TYPE(trap_info), INT(trap_info, vector), INT(trap_info, flags), INT(trap_info, cs),
    INT(trap_info, address),
    K(FLAT_KERNEL_CS), K(FLAT_KERNEL_SS), K(MACH2PHYS_VIRT_START),
    K(MMU_NORMAL_PT_UPDATE), K(MMU_MACHPHYS_UPDATE), K(MMU_PT_UPDATE_PRESERVE_AD),
    TYPE(mmu_update), INT(mmu_update, ptr), INT(mmu_update, val),
    K(MMUEXT_PIN_L1_TABLE), K(MMUEXT_PIN_L2_TABLE), K(MMUEXT_PIN_L3_TABLE), K(MMUEXT_PIN_L4_TABLE),
    K(MMUEXT_UNPIN_TABLE), K(MMUEXT_NEW_BASEPTR), K(MMUEXT_TLB_FLUSH_LOCAL),
    K(MMUEXT_INVLPG_LOCAL), K(MMUEXT_TLB_FLUSH_ALL), K(MMUEXT_INVLPG_ALL), K(MMUEXT_CLEAR_PAGE),
    K(MMUEXT_COPY_PAGE),
    TYPE(mmuext_op), INT(mmuext_op, cmd), FIELD(mmuext_op, arg1), FIELD(mmuext_op, arg2),
    K(UVMF_NONE), K(UVMF_TLB_FLUSH), K(UVMF_INVLPG), K(UVMF_FLUSHTYPE_MASK), K(UVMF_LOCAL),
    K(UVMF_ALL),
    K(CONSOLEIO_write), K(CONSOLEIO_read),

    /* sched.h, version.h, vcpu.h */
    K(SCHEDOP_yield), K(SCHEDOP_block), K(SCHEDOP_shutdown), K(SCHEDOP_poll),
    K(SHUTDOWN_poweroff), K(SHUTDOWN_reboot), K(SHUTDOWN_suspend), K(SHUTDOWN_crash),
    K(SHUTDOWN_watchdog),
    TYPE(sched_shutdown), INT(sched_shutdown, reason),
    K(XENVER_version), K(XENVER_extraversion), K(XENVER_capabilities), K(XENVER_get_features),
    K(XENVER_pagesize),
    K(VCPUOP_up), K(VCPUOP_down), K(VCPUOP_is_up), K(VCPUOP_set_periodic_timer),
    K(VCPUOP_stop_periodic_timer), K(VCPUOP_set_singleshot_timer),
    K(VCPUOP_stop_singleshot_timer), K(VCPUOP_register_vcpu_info),

    /* elfnote.h */
    K(XEN_ELFNOTE_INFO), K(XEN_ELFNOTE_ENTRY), K(XEN_ELFNOTE_HYPERCALL_PAGE),
    K(XEN_ELFNOTE_VIRT_BASE), K(XEN_ELFNOTE_PADDR_OFFSET), K(XEN_ELFNOTE_XEN_VERSION),
    K(XEN_ELFNOTE_GUEST_OS), K(XEN_ELFNOTE_GUEST_VERSION), K(XEN_ELFNOTE_LOADER),
    K(XEN_ELFNOTE_PAE_MODE), K(XEN_ELFNOTE_FEATURES), K(XEN_ELFNOTE_MOD_START_PFN),
    K(XEN_ELFNOTE_SUPPORTED_FEATURES), K(XEN_ELFNOTE_PHYS32_ENTRY),

    /* arch-x86/hvm/start_info.h (PVH) */
    K(XEN_HVM_START_MAGIC_VALUE), K(XEN_HVM_MEMMAP_TYPE_RAM), K(XEN_HVM_MEMMAP_TYPE_RESERVED),
    K(XEN_HVM_MEMMAP_TYPE_ACPI), K(XEN_HVM_MEMMAP_TYPE_NVS), K(XEN_HVM_MEMMAP_TYPE_UNUSABLE),
    TYPE(hvm_start_info), INT(hvm_start_info, magic), INT(hvm_start_info, version),
    INT(hvm_start_info, flags), INT(hvm_start_info, nr_modules), INT(hvm_start_info, modlist_paddr),
    INT(hvm_start_info, cmdline_paddr), INT(hvm_start_info, rsdp_paddr),
    INT(hvm_start_info, memmap_paddr), INT(hvm_start_info, memmap_entries),
    INT(hvm_start_info, reserved),
    TYPE(hvm_modlist_entry), INT(hvm_modlist_entry, paddr), INT(hvm_modlist_entry, size),
    INT(hvm_modlist_entry, cmdline_paddr), INT(hvm_modlist_entry, reserved),
    TYPE(hvm_memmap_table_entry), INT(hvm_memmap_table_entry, addr),
    INT(hvm_memmap_table_entry, size), INT(hvm_memmap_table_entry, type),
    INT(hvm_memmap_table_entry, reserved),

    /* errno.h (Xen's) */
    K(XEN_EPERM), K(XEN_ENOENT), K(XEN_ESRCH), K(XEN_EIO), K(XEN_E2BIG), K(XEN_EAGAIN),
    K(XEN_ENOMEM), K(XEN_EACCES), K(XEN_EFAULT), K(XEN_EBUSY), K(XEN_EEXIST), K(XEN_EISDIR),
    K(XEN_EINVAL), K(XEN_ENOSPC), K(XEN_EROFS), K(XEN_ENOSYS), K(XEN_ENOTEMPTY),
    K(XEN_EOPNOTSUPP), K(XEN_EISCONN),

    /* grant_table.h */
    { "sizeof(grant_ref_t)", (long long)sizeof(grant_ref_t) },
    { "sizeof(grant_handle_t)", (long long)sizeof(grant_handle_t) },
    K(GNTTAB_NR_RESERVED_ENTRIES), K(GNTTAB_RESERVED_CONSOLE), K(GNTTAB_RESERVED_XENSTORE),
    K(GTF_invalid), K(GTF_permit_access), K(GTF_accept_transfer), K(GTF_transitive),
    K(GTF_type_mask), K(GTF_readonly), K(GTF_reading), K(GTF_writing), K(GTF_PWT), K(GTF_PCD),
    K(GTF_PAT), K(GTF_sub_page), K(GTF_transfer_committed), K(GTF_transfer_completed),
    TYPE(grant_entry_v1), INT(grant_entry_v1, flags), INT(grant_entry_v1, domid),
    INT(grant_entry_v1, frame),
    K(GNTTABOP_map_grant_ref), K(GNTTABOP_unmap_grant_ref), K(GNTTABOP_setup_table),
    K(GNTTABOP_dump_table), K(GNTTABOP_transfer), K(GNTTABOP_copy), K(GNTTABOP_query_size),
    K(GNTTABOP_unmap_and_replace), K(GNTTABOP_set_version), K(GNTTABOP_get_version),
    TYPE(gnttab_setup_table), INT(gnttab_setup_table, dom), INT(gnttab_setup_table, nr_frames),
    INT(gnttab_setup_table, status), FIELD(gnttab_setup_table, frame_list),
    K(GNTMAP_device_map), K(GNTMAP_host_map), K(GNTMAP_readonly), K(GNTMAP_application_map),
    K(GNTMAP_contains_pte), K(GNTMAP_guest_avail_mask),
    TYPE(gnttab_map_grant_ref), INT(gnttab_map_grant_ref, host_addr),
    INT(gnttab_map_grant_ref, flags), INT(gnttab_map_grant_ref, ref),
    INT(gnttab_map_grant_ref, dom), INT(gnttab_map_grant_ref, status),
    INT(gnttab_map_grant_ref, handle), INT(gnttab_map_grant_ref, dev_bus_addr),
    TYPE(gnttab_unmap_grant_ref), INT(gnttab_unmap_grant_ref, host_addr),
    INT(gnttab_unmap_grant_ref, dev_bus_addr), INT(gnttab_unmap_grant_ref, handle),
    INT(gnttab_unmap_grant_ref, status),
    K(GNTCOPY_source_gref), K(GNTCOPY_dest_gref),
    TYPE(gnttab_copy_ptr), FIELD(gnttab_copy_ptr, u), INT(gnttab_copy_ptr, u.ref),
    INT(gnttab_copy_ptr, u.gmfn), INT(gnttab_copy_ptr, domid), INT(gnttab_copy_ptr, offset),
    TYPE(gnttab_copy), FIELD(gnttab_copy, source), FIELD(gnttab_copy, dest),
    INT(gnttab_copy, len), INT(gnttab_copy, flags), INT(gnttab_copy, status),
    TYPE(gnttab_query_size), INT(gnttab_query_size, dom), INT(gnttab_query_size, nr_frames),
    INT(gnttab_query_size, max_nr_frames), INT(gnttab_query_size, status),
    K(GNTST_okay), K(GNTST_general_error), K(GNTST_bad_domain), K(GNTST_bad_gntref),
    K(GNTST_bad_handle), K(GNTST_bad_virt_addr), K(GNTST_bad_dev_addr), K(GNTST_no_device_space),
    K(GNTST_permission_denied), K(GNTST_bad_page), K(GNTST_bad_copy_arg),
    K(GNTST_address_too_big), K(GNTST_eagain), K(GNTST_no_space),

    /* event_channel.h */
    { "sizeof(evtchn_port_t)", (long long)sizeof(evtchn_port_t) },
    K(EVTCHNOP_bind_interdomain), K(EVTCHNOP_bind_virq), K(EVTCHNOP_bind_pirq), K(EVTCHNOP_close),
    K(EVTCHNOP_send), K(EVTCHNOP_status), K(EVTCHNOP_alloc_unbound), K(EVTCHNOP_bind_ipi),
    K(EVTCHNOP_bind_vcpu), K(EVTCHNOP_unmask),
    TYPE(evtchn_alloc_unbound), INT(evtchn_alloc_unbound, dom),
    INT(evtchn_alloc_unbound, remote_dom), INT(evtchn_alloc_unbound, port),
    TYPE(evtchn_bind_interdomain), INT(evtchn_bind_interdomain, remote_dom),
    INT(evtchn_bind_interdomain, remote_port), INT(evtchn_bind_interdomain, local_port),
    TYPE(evtchn_bind_virq), INT(evtchn_bind_virq, virq), INT(evtchn_bind_virq, vcpu),
    INT(evtchn_bind_virq, port),
    TYPE(evtchn_close), INT(evtchn_close, port),
    TYPE(evtchn_send), INT(evtchn_send, port),
    TYPE(evtchn_unmask), INT(evtchn_unmask, port),

    /* io/blkif.h */
    { "sizeof(blkif_vdev_t)", (long long)sizeof(blkif_vdev_t) },
    { "sizeof(blkif_sector_t)", (long long)sizeof(blkif_sector_t) },
    K(BLKIF_OP_READ), K(BLKIF_OP_WRITE), K(BLKIF_OP_WRITE_BARRIER), K(BLKIF_OP_FLUSH_DISKCACHE),
    K(BLKIF_OP_RESERVED_1), K(BLKIF_OP_DISCARD), K(BLKIF_OP_INDIRECT),
    K(BLKIF_MAX_SEGMENTS_PER_REQUEST), K(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    K(BLKIF_DISCARD_SECURE), K(BLKIF_RSP_EOPNOTSUPP), K(BLKIF_RSP_ERROR), K(BLKIF_RSP_OKAY),
    K(VDISK_CDROM), K(VDISK_REMOVABLE), K(VDISK_READONLY),
    TYPE(blkif_request_segment), INT(blkif_request_segment, gref),
    INT(blkif_request_segment, first_sect), INT(blkif_request_segment, last_sect),
    TYPE(blkif_request), INT(blkif_request, operation), INT(blkif_request, nr_segments),
    INT(blkif_request, handle), INT(blkif_request, id), INT(blkif_request, sector_number),
    FIELD(blkif_request, seg),
    TYPE(blkif_request_discard), INT(blkif_request_discard, operation),
    INT(blkif_request_discard, flag), INT(blkif_request_discard, handle),
    INT(blkif_request_discard, id), INT(blkif_request_discard, sector_number),
    INT(blkif_request_discard, nr_sectors),
    TYPE(blkif_request_indirect), INT(blkif_request_indirect, operation),
    INT(blkif_request_indirect, indirect_op), INT(blkif_request_indirect, nr_segments),
    INT(blkif_request_indirect, id), INT(blkif_request_indirect, sector_number),
    INT(blkif_request_indirect, handle), FIELD(blkif_request_indirect, indirect_grefs),
    TYPE(blkif_response), INT(blkif_response, id), INT(blkif_response, operation),
    INT(blkif_response, status),
    { "segments_per_indirect_page",
      (long long)((1 << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment)) },

    /* io/netif.h */
    K(XEN_NETIF_NR_SLOTS_MIN), K(XEN_NETIF_MAX_TX_SIZE),
    K(NETTXF_csum_blank), K(NETTXF_data_validated), K(NETTXF_more_data), K(NETTXF_extra_info),
    K(NETRXF_data_validated), K(NETRXF_csum_blank), K(NETRXF_more_data), K(NETRXF_extra_info),
    K(NETRXF_gso_prefix),
    K(XEN_NETIF_EXTRA_TYPE_NONE), K(XEN_NETIF_EXTRA_TYPE_GSO), K(XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
    K(XEN_NETIF_EXTRA_TYPE_MCAST_DEL), K(XEN_NETIF_EXTRA_TYPE_HASH), K(XEN_NETIF_EXTRA_TYPE_MAX),
    K(XEN_NETIF_EXTRA_FLAG_MORE),
    K(XEN_NETIF_GSO_TYPE_NONE), K(XEN_NETIF_GSO_TYPE_TCPV4), K(XEN_NETIF_GSO_TYPE_TCPV6),
    K(_XEN_NETIF_CTRL_HASH_TYPE_IPV4), K(_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
    K(_XEN_NETIF_CTRL_HASH_TYPE_IPV6), K(_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP),
    K(XEN_NETIF_CTRL_HASH_ALGORITHM_NONE), K(XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ),
    K(NETIF_RSP_DROPPED), K(NETIF_RSP_ERROR), K(NETIF_RSP_OKAY), K(NETIF_RSP_NULL),
    TYPE(netif_tx_request), INT(netif_tx_request, gref), INT(netif_tx_request, offset),
    INT(netif_tx_request, flags), INT(netif_tx_request, id), INT(netif_tx_request, size),
    TYPE(netif_tx_response), INT(netif_tx_response, id), INT(netif_tx_response, status),
    TYPE(netif_rx_request), INT(netif_rx_request, id), INT(netif_rx_request, pad),
    INT(netif_rx_request, gref),
    TYPE(netif_rx_response), INT(netif_rx_response, id), INT(netif_rx_response, offset),
    INT(netif_rx_response, flags), INT(netif_rx_response, status),
    TYPE(netif_extra_info), INT(netif_extra_info, type), INT(netif_extra_info, flags),
    FIELD(netif_extra_info, u),
    INT(netif_extra_info, u.gso.size), INT(netif_extra_info, u.gso.type),
    INT(netif_extra_info, u.gso.pad), INT(netif_extra_info, u.gso.features),
    FIELD(netif_extra_info, u.mcast.addr),
    INT(netif_extra_info, u.hash.type), INT(netif_extra_info, u.hash.algorithm),
    FIELD(netif_extra_info, u.hash.value),

    /* io/console.h */
    TYPE(xencons_interface), FIELD(xencons_interface, in), FIELD(xencons_interface, out),
    INT(xencons_interface, in_cons), INT(xencons_interface, in_prod),
    INT(xencons_interface, out_cons), INT(xencons_interface, out_prod),

    /* io/xs_wire.h */
    K(XS_CONTROL), K(XS_DEBUG), K(XS_DIRECTORY), K(XS_READ), K(XS_GET_PERMS), K(XS_WATCH),
    K(XS_UNWATCH), K(XS_TRANSACTION_START), K(XS_TRANSACTION_END), K(XS_INTRODUCE),
    K(XS_RELEASE), K(XS_GET_DOMAIN_PATH), K(XS_WRITE), K(XS_MKDIR), K(XS_RM), K(XS_SET_PERMS),
    K(XS_WATCH_EVENT), K(XS_ERROR), K(XS_IS_DOMAIN_INTRODUCED), K(XS_RESUME), K(XS_SET_TARGET),
    K(XS_RESET_WATCHES), K(XS_DIRECTORY_PART), K(XS_TYPE_COUNT), K(XS_INVALID),
    K(XS_WATCH_PATH), K(XS_WATCH_TOKEN),
    TYPE(xsd_sockmsg), INT(xsd_sockmsg, type), INT(xsd_sockmsg, req_id), INT(xsd_sockmsg, tx_id),
    INT(xsd_sockmsg, len),
    K(XENSTORE_RING_SIZE), K(XENSTORE_PAYLOAD_MAX), K(XENSTORE_ABS_PATH_MAX),
    K(XENSTORE_REL_PATH_MAX), K(XENSTORE_SERVER_FEATURE_RECONNECTION),
    K(XENSTORE_SERVER_FEATURE_ERROR), K(XENSTORE_CONNECTED), K(XENSTORE_RECONNECT),
    K(XENSTORE_ERROR_NONE), K(XENSTORE_ERROR_COMM), K(XENSTORE_ERROR_RINGIDX),
    K(XENSTORE_ERROR_PROTO),
    TYPE(xenstore_domain_interface), FIELD(xenstore_domain_interface, req),
    FIELD(xenstore_domain_interface, rsp), INT(xenstore_domain_interface, req_cons),
    INT(xenstore_domain_interface, req_prod), INT(xenstore_domain_interface, rsp_cons),
    INT(xenstore_domain_interface, rsp_prod), INT(xenstore_domain_interface, server_features),
    INT(xenstore_domain_interface, connection), INT(xenstore_domain_interface, error),

    /* sys/gntdev.h (dom0's /dev/xen/gntdev) */
    TYPE(ioctl_gntdev_grant_ref), INT(ioctl_gntdev_grant_ref, domid),
    INT(ioctl_gntdev_grant_ref, ref),
    TYPE(ioctl_gntdev_map_grant_ref), INT(ioctl_gntdev_map_grant_ref, count),
    INT(ioctl_gntdev_map_grant_ref, pad), INT(ioctl_gntdev_map_grant_ref, index),
    FIELD(ioctl_gntdev_map_grant_ref, refs),
    TYPE(ioctl_gntdev_unmap_grant_ref), INT(ioctl_gntdev_unmap_grant_ref, index),
    INT(ioctl_gntdev_unmap_grant_ref, count), INT(ioctl_gntdev_unmap_grant_ref, pad),
    TYPE(ioctl_gntdev_set_max_grants), INT(ioctl_gntdev_set_max_grants, count),
    TYPE(ioctl_gntdev_grant_copy_segment),
    FIELD(ioctl_gntdev_grant_copy_segment, source),
    ANON_ALIGN(ioctl_gntdev_grant_copy_segment, source),
    FIELD(ioctl_gntdev_grant_copy_segment, source.virt),
    FIELD(ioctl_gntdev_grant_copy_segment, source.foreign),
    ANON_ALIGN(ioctl_gntdev_grant_copy_segment, source.foreign),
    INT(ioctl_gntdev_grant_copy_segment, source.foreign.ref),
    INT(ioctl_gntdev_grant_copy_segment, source.foreign.offset),
    INT(ioctl_gntdev_grant_copy_segment, source.foreign.domid),
    FIELD(ioctl_gntdev_grant_copy_segment, dest),
    FIELD(ioctl_gntdev_grant_copy_segment, dest.virt),
    FIELD(ioctl_gntdev_grant_copy_segment, dest.foreign),
    INT(ioctl_gntdev_grant_copy_segment, dest.foreign.ref),
    INT(ioctl_gntdev_grant_copy_segment, dest.foreign.offset),
    INT(ioctl_gntdev_grant_copy_segment, dest.foreign.domid),
    INT(ioctl_gntdev_grant_copy_segment, len), INT(ioctl_gntdev_grant_copy_segment, flags),
    INT(ioctl_gntdev_grant_copy_segment, status),
    TYPE(ioctl_gntdev_grant_copy), INT(ioctl_gntdev_grant_copy, count),
    FIELD(ioctl_gntdev_grant_copy, segments),
    K(IOCTL_GNTDEV_MAP_GRANT_REF), K(IOCTL_GNTDEV_UNMAP_GRANT_REF), K(IOCTL_GNTDEV_SET_MAX_GRANTS),
    K(IOCTL_GNTDEV_GRANT_COPY),

    /* sys/evtchn.h (dom0's /dev/xen/evtchn) */
    TYPE(ioctl_evtchn_bind_interdomain), INT(ioctl_evtchn_bind_interdomain, remote_domain),
    INT(ioctl_evtchn_bind_interdomain, remote_port),
    TYPE(ioctl_evtchn_unbind), INT(ioctl_evtchn_unbind, port),
    TYPE(ioctl_evtchn_notify), INT(ioctl_evtchn_notify, port),
    K(IOCTL_EVTCHN_BIND_INTERDOMAIN), K(IOCTL_EVTCHN_UNBIND), K(IOCTL_EVTCHN_NOTIFY),
};

const struct pv_fact *pv_abi_facts_get(size_t *count)
{
    *count = sizeof(pv_abi_facts) / sizeof(pv_abi_facts[0]);
    return pv_abi_facts;
}

/*
 * Facts only code can compute: what the trap_info flag macros set and read. Filled on each call
 * (the same values every time).
 */
static struct pv_fact pv_abi_computed_facts[2];

const struct pv_fact *pv_abi_computed_facts_get(size_t *count)
{
    struct trap_info t = { 0 };
    TI_SET_IF(&t, 1);
    pv_abi_computed_facts[0] = (struct pv_fact){ "TI_SET_IF(1).flags", t.flags };
    t.flags = 0xff;
    pv_abi_computed_facts[1] = (struct pv_fact){ "TI_GET_DPL(0xff)", TI_GET_DPL(&t) };
    *count = 2;
    return pv_abi_computed_facts;
}

static const struct pv_str_fact pv_abi_str_facts[] = {
    { "XS_WRITE_NONE", XS_WRITE_NONE },
    { "XS_WRITE_CREATE", XS_WRITE_CREATE },
    { "XS_WRITE_CREATE_EXCL", XS_WRITE_CREATE_EXCL },
    { "XEN_IO_PROTO_ABI_X86_64", XEN_IO_PROTO_ABI_X86_64 },
    { "XEN_IO_PROTO_ABI_NATIVE", XEN_IO_PROTO_ABI_NATIVE },
};

const struct pv_str_fact *pv_abi_str_facts_get(size_t *count)
{
    *count = sizeof(pv_abi_str_facts) / sizeof(pv_abi_str_facts[0]);
    return pv_abi_str_facts;
}

/* xs_wire.h's error table, compiled with <errno.h> in scope as the header expects. */
const struct xsd_errors *pv_xsd_errors_get(size_t *count)
{
    *count = sizeof(xsd_errors) / sizeof(xsd_errors[0]);
    return xsd_errors;
}
