//! Compiles the C side of the differential tests against the system's Xen public headers and
//! Linux's virtio uapi headers.
//!
//! The headers come from Debian's `libxen-dev` (`/usr/include/xen`) and `linux-libc-dev`
//! (`/usr/include/linux`), never from a copy in this repository: the point of these tests is to
//! compare pvkit with Xen's and Linux's own definitions.

use std::path::Path;

/// The header every C file here needs; its absence means libxen-dev is not installed.
const RING_H: &str = "/usr/include/xen/io/ring.h";

/// The virtio header the virtio cross-check needs; its absence means linux-libc-dev is not installed.
const VIRTIO_RING_H: &str = "/usr/include/linux/virtio_ring.h";

const C_FILES: &[&str] = &["c/abi_layout.c", "c/virtio_layout.c", "c/ring_peer.c"];

fn main() {
    println!("cargo:rerun-if-changed=/usr/include/xen");
    println!("cargo:rerun-if-changed={VIRTIO_RING_H}");
    if !Path::new(RING_H).is_file() {
        panic!(
            "{RING_H} is missing: the differential tests compile against Xen's public C headers. \
             Install them with `apt-get install libxen-dev` (Debian/Ubuntu), then rebuild."
        );
    }
    if !Path::new(VIRTIO_RING_H).is_file() {
        panic!(
            "{VIRTIO_RING_H} is missing: the virtio cross-check compiles against Linux's uapi headers. \
             Install them with `apt-get install linux-libc-dev` (Debian/Ubuntu), then rebuild."
        );
    }
    let mut build = cc::Build::new();
    build.std("gnu11").warnings_into_errors(true);
    for file in C_FILES {
        println!("cargo:rerun-if-changed={file}");
        build.file(file);
    }
    build.compile("pvkit_xen_c");
}
