//! Links the kernel with `linker.ld` (fixed load address 1 MiB, PT_NOTE for the Xen/PVH notes).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // Only the freestanding target is a kernel; a host build (e.g. `cargo metadata`-driven tools)
    // must not get the kernel's linker script.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
