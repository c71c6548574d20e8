//! Safe wrappers over the C side compiled from `tests/c/`.

use std::ffi::{CStr, c_char, c_int, c_longlong};
use std::slice;

/// Layout facts: what the C compiler says about the Xen headers (`tests/c/abi_layout.c`).
pub mod layout {
    use super::*;

    #[repr(C)]
    struct Fact {
        name: *const c_char,
        value: c_longlong,
    }

    #[repr(C)]
    struct StrFact {
        name: *const c_char,
        value: *const c_char,
    }

    /// `struct xsd_errors` from xs_wire.h.
    #[repr(C)]
    struct XsdErrors {
        errnum: c_int,
        errstring: *const c_char,
    }

    unsafe extern "C" {
        fn pv_abi_facts_get(count: *mut usize) -> *const Fact;
        fn pv_abi_str_facts_get(count: *mut usize) -> *const StrFact;
        fn pv_xsd_errors_get(count: *mut usize) -> *const XsdErrors;
    }

    /// Reads a C string the C side keeps in static storage.
    ///
    /// # Safety
    /// `p` must point to a NUL-terminated string that lives for the whole program.
    unsafe fn static_str(p: *const c_char) -> String {
        // SAFETY: guaranteed by the caller.
        let s = unsafe { CStr::from_ptr(p) };
        s.to_str().expect("C fact strings are ASCII").to_owned()
    }

    /// Views a static C array returned by one of the `*_get` functions.
    ///
    /// # Safety
    /// `get` must write the array's length to its argument and return a pointer to a static array of
    /// that many `T`.
    unsafe fn table<T>(get: unsafe extern "C" fn(*mut usize) -> *const T) -> &'static [T] {
        let mut n = 0;
        // SAFETY: `get` only writes the length through the pointer we give it.
        let p = unsafe { get(&mut n) };
        // SAFETY: guaranteed by the caller: `p` points to `n` static, initialised entries.
        unsafe { slice::from_raw_parts(p, n) }
    }

    /// Every numeric fact (`sizeof(T)`, `alignof(T)`, `offsetof(T.f)`, `sizeof(T.f)`, `signed(T.f)`,
    /// or a constant's C name) with its value.
    pub fn facts() -> Vec<(String, i64)> {
        // SAFETY: `pv_abi_facts_get` has `table`'s contract (tests/c/abi_layout.c).
        let facts = unsafe { table(pv_abi_facts_get) };
        facts
            .iter()
            // SAFETY: every name is a string literal in the C file.
            .map(|f| (unsafe { static_str(f.name) }, f.value))
            .collect()
    }

    /// String constants (`XS_WRITE_*`, protocol names) with their values.
    pub fn str_facts() -> Vec<(String, String)> {
        // SAFETY: `pv_abi_str_facts_get` has `table`'s contract.
        let facts = unsafe { table(pv_abi_str_facts_get) };
        facts
            .iter()
            .map(|f| {
                // SAFETY: names are string literals in the C file.
                let name = unsafe { static_str(f.name) };
                // SAFETY: values are string literals in the Xen headers.
                let value = unsafe { static_str(f.value) };
                (name, value)
            })
            .collect()
    }

    /// xs_wire.h's `xsd_errors[]` table, in order: (errno on this host, name).
    pub fn xsd_errors() -> Vec<(i32, String)> {
        // SAFETY: `pv_xsd_errors_get` has `table`'s contract.
        let errors = unsafe { table(pv_xsd_errors_get) };
        errors
            .iter()
            // SAFETY: the names are string literals in xs_wire.h.
            .map(|e| (e.errnum, unsafe { static_str(e.errstring) }))
            .collect()
    }
}
