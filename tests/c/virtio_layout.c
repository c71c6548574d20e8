/*
 * Layout facts of the virtio ABI, as the C compiler sees them through Linux's uapi headers
 * (/usr/include/linux, Debian's linux-libc-dev). pvkit-tests compares every entry with
 * ring_protocol::abi::virtio. Entry names as in abi_layout.c.
 *
 * Alignment is not compared: the Rust types use little-endian byte-order fields of alignment 1 (so
 * they read correctly from any offset on any host), while the C structs have natural alignment
 * (the config spaces are packed). Sizes and every field offset are compared, which fixes the layout.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_net.h>
#include <linux/virtio_pci.h>

struct pv_fact {
    const char *name;
    long long value;
};

#define SIZE(t) { "sizeof(" #t ")", (long long)sizeof(struct t) }
#define OFFSET(t, f) { "offsetof(" #t "." #f ")", (long long)offsetof(struct t, f) }
#define FIELD(t, f) \
    OFFSET(t, f), \
    { "sizeof(" #t "." #f ")", (long long)sizeof(((struct t *)0)->f) }
#define INT(t, f) \
    FIELD(t, f), \
    { "signed(" #t "." #f ")", (long long)((__typeof__(((struct t *)0)->f))-1 < (__typeof__(((struct t *)0)->f))1) }
#define K(c) { #c, (long long)(c) }

static const struct pv_fact pv_virtio_facts[] = {
    /* virtio_config.h */
    K(VIRTIO_CONFIG_S_ACKNOWLEDGE), K(VIRTIO_CONFIG_S_DRIVER), K(VIRTIO_CONFIG_S_DRIVER_OK),
    K(VIRTIO_CONFIG_S_FEATURES_OK), K(VIRTIO_CONFIG_S_NEEDS_RESET), K(VIRTIO_CONFIG_S_FAILED),
    K(VIRTIO_F_ANY_LAYOUT), K(VIRTIO_F_VERSION_1), K(VIRTIO_F_ACCESS_PLATFORM),
    K(VIRTIO_F_RING_PACKED), K(VIRTIO_F_IN_ORDER),

    /* virtio_ring.h */
    K(VIRTIO_RING_F_INDIRECT_DESC), K(VIRTIO_RING_F_EVENT_IDX),
    K(VRING_DESC_F_NEXT), K(VRING_DESC_F_WRITE), K(VRING_DESC_F_INDIRECT),
    K(VRING_USED_F_NO_NOTIFY), K(VRING_AVAIL_F_NO_INTERRUPT),
    K(VRING_DESC_ALIGN_SIZE), K(VRING_AVAIL_ALIGN_SIZE), K(VRING_USED_ALIGN_SIZE),
    SIZE(vring_desc), INT(vring_desc, addr), INT(vring_desc, len), INT(vring_desc, flags),
    INT(vring_desc, next),
    SIZE(vring_avail), INT(vring_avail, flags), INT(vring_avail, idx), OFFSET(vring_avail, ring),
    SIZE(vring_used_elem), INT(vring_used_elem, id), INT(vring_used_elem, len),
    SIZE(vring_used), INT(vring_used, flags), INT(vring_used, idx), OFFSET(vring_used, ring),

    /* virtio_pci.h */
    K(VIRTIO_PCI_CAP_COMMON_CFG), K(VIRTIO_PCI_CAP_NOTIFY_CFG), K(VIRTIO_PCI_CAP_ISR_CFG),
    K(VIRTIO_PCI_CAP_DEVICE_CFG), K(VIRTIO_PCI_CAP_PCI_CFG), K(VIRTIO_MSI_NO_VECTOR),
    SIZE(virtio_pci_cap), INT(virtio_pci_cap, cap_vndr), INT(virtio_pci_cap, cap_next),
    INT(virtio_pci_cap, cap_len), INT(virtio_pci_cap, cfg_type), INT(virtio_pci_cap, bar),
    INT(virtio_pci_cap, id), FIELD(virtio_pci_cap, padding), INT(virtio_pci_cap, offset),
    INT(virtio_pci_cap, length),
    SIZE(virtio_pci_notify_cap), FIELD(virtio_pci_notify_cap, cap),
    INT(virtio_pci_notify_cap, notify_off_multiplier),
    SIZE(virtio_pci_common_cfg), INT(virtio_pci_common_cfg, device_feature_select),
    INT(virtio_pci_common_cfg, device_feature), INT(virtio_pci_common_cfg, guest_feature_select),
    INT(virtio_pci_common_cfg, guest_feature), INT(virtio_pci_common_cfg, msix_config),
    INT(virtio_pci_common_cfg, num_queues), INT(virtio_pci_common_cfg, device_status),
    INT(virtio_pci_common_cfg, config_generation), INT(virtio_pci_common_cfg, queue_select),
    INT(virtio_pci_common_cfg, queue_size), INT(virtio_pci_common_cfg, queue_msix_vector),
    INT(virtio_pci_common_cfg, queue_enable), INT(virtio_pci_common_cfg, queue_notify_off),
    INT(virtio_pci_common_cfg, queue_desc_lo), INT(virtio_pci_common_cfg, queue_desc_hi),
    INT(virtio_pci_common_cfg, queue_avail_lo), INT(virtio_pci_common_cfg, queue_avail_hi),
    INT(virtio_pci_common_cfg, queue_used_lo), INT(virtio_pci_common_cfg, queue_used_hi),

    /* virtio_blk.h */
    K(VIRTIO_BLK_F_SIZE_MAX), K(VIRTIO_BLK_F_SEG_MAX), K(VIRTIO_BLK_F_GEOMETRY), K(VIRTIO_BLK_F_RO),
    K(VIRTIO_BLK_F_BLK_SIZE), K(VIRTIO_BLK_F_FLUSH), K(VIRTIO_BLK_F_TOPOLOGY),
    K(VIRTIO_BLK_F_CONFIG_WCE), K(VIRTIO_BLK_F_MQ), K(VIRTIO_BLK_F_DISCARD),
    K(VIRTIO_BLK_F_WRITE_ZEROES), K(VIRTIO_BLK_F_SECURE_ERASE), K(VIRTIO_BLK_ID_BYTES),
    K(VIRTIO_BLK_T_IN), K(VIRTIO_BLK_T_OUT), K(VIRTIO_BLK_T_FLUSH), K(VIRTIO_BLK_T_GET_ID),
    K(VIRTIO_BLK_T_DISCARD), K(VIRTIO_BLK_T_WRITE_ZEROES), K(VIRTIO_BLK_T_SECURE_ERASE),
    K(VIRTIO_BLK_S_OK), K(VIRTIO_BLK_S_IOERR), K(VIRTIO_BLK_S_UNSUPP),
    K(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
    SIZE(virtio_blk_geometry), INT(virtio_blk_geometry, cylinders), INT(virtio_blk_geometry, heads),
    INT(virtio_blk_geometry, sectors),
    SIZE(virtio_blk_config), INT(virtio_blk_config, capacity), INT(virtio_blk_config, size_max),
    INT(virtio_blk_config, seg_max), FIELD(virtio_blk_config, geometry),
    INT(virtio_blk_config, blk_size), INT(virtio_blk_config, physical_block_exp),
    INT(virtio_blk_config, alignment_offset), INT(virtio_blk_config, min_io_size),
    INT(virtio_blk_config, opt_io_size), INT(virtio_blk_config, wce), INT(virtio_blk_config, unused),
    INT(virtio_blk_config, num_queues), INT(virtio_blk_config, max_discard_sectors),
    INT(virtio_blk_config, max_discard_seg), INT(virtio_blk_config, discard_sector_alignment),
    INT(virtio_blk_config, max_write_zeroes_sectors), INT(virtio_blk_config, max_write_zeroes_seg),
    INT(virtio_blk_config, write_zeroes_may_unmap), FIELD(virtio_blk_config, unused1),
    INT(virtio_blk_config, max_secure_erase_sectors), INT(virtio_blk_config, max_secure_erase_seg),
    INT(virtio_blk_config, secure_erase_sector_alignment),
    SIZE(virtio_blk_outhdr), INT(virtio_blk_outhdr, type), INT(virtio_blk_outhdr, ioprio),
    INT(virtio_blk_outhdr, sector),
    SIZE(virtio_blk_discard_write_zeroes), INT(virtio_blk_discard_write_zeroes, sector),
    INT(virtio_blk_discard_write_zeroes, num_sectors), INT(virtio_blk_discard_write_zeroes, flags),

    /* virtio_net.h */
    K(VIRTIO_NET_F_CSUM), K(VIRTIO_NET_F_GUEST_CSUM), K(VIRTIO_NET_F_MTU), K(VIRTIO_NET_F_MAC),
    K(VIRTIO_NET_F_MRG_RXBUF), K(VIRTIO_NET_F_STATUS), K(VIRTIO_NET_F_CTRL_VQ), K(VIRTIO_NET_F_MQ),
    K(VIRTIO_NET_S_LINK_UP), K(VIRTIO_NET_S_ANNOUNCE),
    K(VIRTIO_NET_HDR_F_NEEDS_CSUM), K(VIRTIO_NET_HDR_F_DATA_VALID), K(VIRTIO_NET_HDR_GSO_NONE),
    K(VIRTIO_NET_HDR_GSO_TCPV4), K(VIRTIO_NET_HDR_GSO_UDP), K(VIRTIO_NET_HDR_GSO_TCPV6),
    K(VIRTIO_NET_HDR_GSO_ECN),
    SIZE(virtio_net_config), FIELD(virtio_net_config, mac), INT(virtio_net_config, status),
    INT(virtio_net_config, max_virtqueue_pairs), INT(virtio_net_config, mtu),
    INT(virtio_net_config, speed), INT(virtio_net_config, duplex),
    INT(virtio_net_config, rss_max_key_size), INT(virtio_net_config, rss_max_indirection_table_length),
    INT(virtio_net_config, supported_hash_types),
    SIZE(virtio_net_hdr), INT(virtio_net_hdr, flags), INT(virtio_net_hdr, gso_type),
    INT(virtio_net_hdr, hdr_len), INT(virtio_net_hdr, gso_size), INT(virtio_net_hdr, csum_start),
    INT(virtio_net_hdr, csum_offset),
    SIZE(virtio_net_hdr_v1), INT(virtio_net_hdr_v1, flags), INT(virtio_net_hdr_v1, gso_type),
    INT(virtio_net_hdr_v1, hdr_len), INT(virtio_net_hdr_v1, gso_size),
    INT(virtio_net_hdr_v1, csum_start), INT(virtio_net_hdr_v1, csum_offset),
    INT(virtio_net_hdr_v1, num_buffers),
};

const struct pv_fact *pv_virtio_facts_get(size_t *count)
{
    *count = sizeof(pv_virtio_facts) / sizeof(pv_virtio_facts[0]);
    return pv_virtio_facts;
}

/*
 * Where the split ring's event fields sit, as the header's own accessors compute them
 * (vring_init, vring_used_event, vring_avail_event) for a few queue sizes: byte offsets from the
 * start of the available and used rings.
 */
static struct pv_fact pv_virtio_ring_facts[6];
static char ring_names[6][64];
static uint64_t ring_memory[(16 * 256 + 2 * 259 + 4096 + 6 + 8 * 256) / 8 + 1];

const struct pv_fact *pv_virtio_ring_facts_get(size_t *count)
{
    static const unsigned int sizes[] = { 8, 128, 256 };
    for (size_t i = 0; i < 3; i++) {
        struct vring vr;
        vring_init(&vr, sizes[i], ring_memory, 4096);
        snprintf(ring_names[2 * i], 64, "used_event_offset(%u)", sizes[i]);
        pv_virtio_ring_facts[2 * i].name = ring_names[2 * i];
        pv_virtio_ring_facts[2 * i].value = (char *)&vring_used_event(&vr) - (char *)vr.avail;
        snprintf(ring_names[2 * i + 1], 64, "avail_event_offset(%u)", sizes[i]);
        pv_virtio_ring_facts[2 * i + 1].name = ring_names[2 * i + 1];
        pv_virtio_ring_facts[2 * i + 1].value = (char *)&vring_avail_event(&vr) - (char *)vr.used;
    }
    *count = 6;
    return pv_virtio_ring_facts;
}
