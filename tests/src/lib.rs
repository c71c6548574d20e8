//! Host-side integration tests for pvkit. The tests live in `tests/tests/`; this library holds the
//! bindings to the C code in `tests/c/`, which `build.rs` compiles against the system's Xen headers
//! (`/usr/include/xen`, Debian's `libxen-dev`).

pub mod xen_c;
