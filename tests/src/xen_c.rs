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
        fn pv_abi_computed_facts_get(count: *mut usize) -> *const Fact;
        fn pv_xsd_errors_get(count: *mut usize) -> *const XsdErrors;
        fn pv_virtio_facts_get(count: *mut usize) -> *const Fact;
        fn pv_virtio_ring_facts_get(count: *mut usize) -> *const Fact;
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
        // The computed table is filled on each call: one caller at a time.
        static FILLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FILLING.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `pv_abi_facts_get` has `table`'s contract (tests/c/abi_layout.c).
        let facts = unsafe { table(pv_abi_facts_get) };
        // SAFETY: as above; the computed table is only rewritten under `FILLING`, with the same
        // values, and read below.
        let computed = unsafe { table(pv_abi_computed_facts_get) };
        facts
            .iter()
            .chain(computed)
            // SAFETY: every name is a string literal in the C file.
            .map(|f| (unsafe { static_str(f.name) }, f.value))
            .collect()
    }

    /// The virtio facts (`tests/c/virtio_layout.c`, Linux's uapi headers), in the same form, plus
    /// the split ring's event-field offsets as the header's accessors compute them.
    pub fn virtio_facts() -> Vec<(String, i64)> {
        // The second C function fills a static table on each call: one caller at a time.
        static FILLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FILLING.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `pv_virtio_facts_get` has `table`'s contract (tests/c/virtio_layout.c).
        let facts = unsafe { table(pv_virtio_facts_get) };
        // SAFETY: as above; the table it fills is only rewritten under `FILLING`, with the same
        // values, and read below.
        let ring = unsafe { table(pv_virtio_ring_facts_get) };
        facts
            .iter()
            .chain(ring)
            // SAFETY: every name is a string literal or a static buffer in the C file.
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

/// A shared-ring peer built from Xen's `io/ring.h` macros (`tests/c/ring_peer.c`), for the
/// blkif, netif tx and netif rx ring types.
///
/// The C side touches the shared page with plain loads and stores. The tests drive it from one
/// thread, alternating with the Rust rings, so C and Rust accesses never overlap in time.
pub mod ring {
    use std::ffi::{c_int, c_uint, c_void};
    use std::fmt::Debug;
    use std::marker::PhantomData;
    use std::ptr::NonNull;

    use ring_protocol::abi::blkif::{BlkifRequest, BlkifResponse};
    use ring_protocol::abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
    use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

    /// `struct pv_ring_ops` in ring_peer.c: the ring.h operations for one ring type.
    #[repr(C)]
    #[derive(Debug)]
    pub struct RingOps {
        slot_size: unsafe extern "C" fn() -> usize,
        const_ring_size: unsafe extern "C" fn(bytes: usize) -> c_uint,
        front_new:
            unsafe extern "C" fn(page: *mut c_void, len: usize, start: u32, init: c_int) -> *mut c_void,
        back_new: unsafe extern "C" fn(page: *mut c_void, len: usize, start: u32) -> *mut c_void,
        front_size: unsafe extern "C" fn(ring: *mut c_void) -> c_uint,
        back_size: unsafe extern "C" fn(ring: *mut c_void) -> c_uint,
        front_free: unsafe extern "C" fn(ring: *mut c_void) -> c_uint,
        front_write: unsafe extern "C" fn(ring: *mut c_void, req: *const c_void) -> c_int,
        front_push: unsafe extern "C" fn(ring: *mut c_void),
        front_push_notify: unsafe extern "C" fn(ring: *mut c_void) -> c_int,
        front_read: unsafe extern "C" fn(ring: *mut c_void, rsp: *mut c_void) -> c_int,
        front_unconsumed: unsafe extern "C" fn(ring: *mut c_void) -> c_uint,
        front_final_check: unsafe extern "C" fn(ring: *mut c_void) -> c_int,
        back_read: unsafe extern "C" fn(ring: *mut c_void, req: *mut c_void) -> c_int,
        back_unconsumed: unsafe extern "C" fn(ring: *mut c_void) -> c_uint,
        back_write: unsafe extern "C" fn(ring: *mut c_void, rsp: *const c_void),
        back_push: unsafe extern "C" fn(ring: *mut c_void),
        back_push_notify: unsafe extern "C" fn(ring: *mut c_void) -> c_int,
        back_final_check: unsafe extern "C" fn(ring: *mut c_void) -> c_int,
    }

    unsafe extern "C" {
        static pv_blkif_ops: RingOps;
        static pv_netif_tx_ops: RingOps;
        static pv_netif_rx_ops: RingOps;
        fn pv_sring_header_size() -> usize;
        fn pv_sring_set_indices(page: *mut c_void, prod: u32, event: u32);
        fn pv_ring_free(ring: *mut c_void);
    }

    /// A ring type with a C peer: its entry types and the C operations on it.
    pub trait Proto {
        /// The request entry.
        type Req: FromBytes + IntoBytes + Immutable + Copy + Debug + PartialEq;
        /// The response entry.
        type Rsp: FromBytes + IntoBytes + Immutable + Copy + Debug + PartialEq;
        /// The C name tag given to `DEFINE_RING_TYPES`.
        const NAME: &'static str;
        /// The C operations.
        fn ops() -> &'static RingOps;
    }

    /// `DEFINE_RING_TYPES(blkif, struct blkif_request, struct blkif_response)`.
    #[derive(Debug)]
    pub enum Blkif {}
    /// `DEFINE_RING_TYPES(netif_tx, struct netif_tx_request, struct netif_tx_response)`.
    #[derive(Debug)]
    pub enum NetifTx {}
    /// `DEFINE_RING_TYPES(netif_rx, struct netif_rx_request, struct netif_rx_response)`.
    #[derive(Debug)]
    pub enum NetifRx {}

    impl Proto for Blkif {
        type Req = BlkifRequest;
        type Rsp = BlkifResponse;
        const NAME: &'static str = "blkif";
        fn ops() -> &'static RingOps {
            // SAFETY: an immutable, initialised static defined in ring_peer.c.
            unsafe { &pv_blkif_ops }
        }
    }

    impl Proto for NetifTx {
        type Req = NetifTxRequest;
        type Rsp = NetifTxResponse;
        const NAME: &'static str = "netif_tx";
        fn ops() -> &'static RingOps {
            // SAFETY: an immutable, initialised static defined in ring_peer.c.
            unsafe { &pv_netif_tx_ops }
        }
    }

    impl Proto for NetifRx {
        type Req = NetifRxRequest;
        type Rsp = NetifRxResponse;
        const NAME: &'static str = "netif_rx";
        fn ops() -> &'static RingOps {
            // SAFETY: an immutable, initialised static defined in ring_peer.c.
            unsafe { &pv_netif_rx_ops }
        }
    }

    /// `offsetof(struct blkif_sring, ring)`: the shared header's size.
    pub fn sring_header_size() -> usize {
        // SAFETY: a pure function without arguments.
        unsafe { pv_sring_header_size() }
    }

    /// `sizeof(union P_sring_entry)`.
    pub fn slot_size<P: Proto>() -> usize {
        // SAFETY: a pure function without arguments.
        unsafe { (P::ops().slot_size)() }
    }

    /// `__CONST_RING_SIZE(P, bytes)`: slots in a ring of `bytes` bytes.
    pub fn const_ring_size<P: Proto>(bytes: usize) -> u32 {
        // SAFETY: a pure function of its argument.
        unsafe { (P::ops().const_ring_size)(bytes) }
    }

    /// Writes the shared header's four indices: both producers `prod`, both events `event`.
    ///
    /// # Safety
    /// `page` must be valid for writes of the 16-byte header and not accessed concurrently.
    pub unsafe fn set_indices(page: NonNull<u8>, prod: u32, event: u32) {
        // SAFETY: guaranteed by the caller.
        unsafe { pv_sring_set_indices(page.as_ptr().cast(), prod, event) }
    }

    /// The peer's producer index is impossible (ring.h's `RING_*_PROD_OVERFLOW`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ProdOverflow;

    /// A C front end (`P_front_ring_t`) over memory the caller owns.
    #[derive(Debug)]
    pub struct CFront<P: Proto> {
        ring: NonNull<c_void>,
        _proto: PhantomData<P>,
    }

    /// A C back end (`P_back_ring_t`) over memory the caller owns.
    #[derive(Debug)]
    pub struct CBack<P: Proto> {
        ring: NonNull<c_void>,
        _proto: PhantomData<P>,
    }

    impl<P: Proto> CFront<P> {
        /// `FRONT_RING_ATTACH(r, page, start, len)`, preceded by `SHARED_RING_INIT` if `init`.
        ///
        /// # Safety
        /// `page` must be valid for `len` bytes, 8-byte aligned, for the whole life of the ring, and
        /// nothing may access it while a method of this ring runs.
        pub unsafe fn new(page: NonNull<u8>, len: usize, start: u32, init: bool) -> Self {
            // SAFETY: the C function allocates private state and, if asked, writes the header of the
            // page the caller vouches for.
            let ring = unsafe { (P::ops().front_new)(page.as_ptr().cast(), len, start, c_int::from(init)) };
            Self {
                ring: NonNull::new(ring).expect("calloc failed"),
                _proto: PhantomData,
            }
        }

        fn ptr(&self) -> *mut c_void {
            self.ring.as_ptr()
        }

        /// `RING_SIZE`.
        pub fn size(&self) -> u32 {
            // SAFETY: `ring` is live private state over a valid page (constructor contract).
            unsafe { (P::ops().front_size)(self.ptr()) }
        }

        /// `RING_FREE_REQUESTS`.
        pub fn free_requests(&self) -> u32 {
            // SAFETY: as in `size`.
            unsafe { (P::ops().front_free)(self.ptr()) }
        }

        /// Queues `req` at `req_prod_pvt`; false if `RING_FULL`.
        pub fn write_request(&mut self, req: &P::Req) -> bool {
            // SAFETY: as in `size`; `req` points to a whole request the C side copies.
            unsafe { (P::ops().front_write)(self.ptr(), (req as *const P::Req).cast()) != 0 }
        }

        /// `RING_PUSH_REQUESTS`.
        pub fn push_requests(&mut self) {
            // SAFETY: as in `size`.
            unsafe { (P::ops().front_push)(self.ptr()) }
        }

        /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`.
        pub fn push_requests_and_check_notify(&mut self) -> bool {
            // SAFETY: as in `size`.
            unsafe { (P::ops().front_push_notify)(self.ptr()) != 0 }
        }

        /// Copies out and consumes the next response, if any.
        ///
        /// # Errors
        /// [`ProdOverflow`] if `RING_RESPONSE_PROD_OVERFLOW` holds for the shared `rsp_prod`.
        pub fn read_response(&mut self) -> Result<Option<P::Rsp>, ProdOverflow> {
            let mut rsp = P::Rsp::new_zeroed();
            // SAFETY: as in `size`; `rsp` is a whole response the C side overwrites.
            let r = unsafe { (P::ops().front_read)(self.ptr(), (&mut rsp as *mut P::Rsp).cast()) };
            match r {
                1 => Ok(Some(rsp)),
                0 => Ok(None),
                _ => Err(ProdOverflow),
            }
        }

        /// `RING_HAS_UNCONSUMED_RESPONSES`.
        pub fn unconsumed_responses(&self) -> u32 {
            // SAFETY: as in `size`.
            unsafe { (P::ops().front_unconsumed)(self.ptr()) }
        }

        /// `RING_FINAL_CHECK_FOR_RESPONSES`.
        pub fn final_check_for_responses(&mut self) -> bool {
            // SAFETY: as in `size`.
            unsafe { (P::ops().front_final_check)(self.ptr()) != 0 }
        }
    }

    impl<P: Proto> CBack<P> {
        /// `BACK_RING_ATTACH(r, page, start, len)`.
        ///
        /// # Safety
        /// As [`CFront::new`].
        pub unsafe fn new(page: NonNull<u8>, len: usize, start: u32) -> Self {
            // SAFETY: the C function allocates private state pointing at the page the caller vouches for.
            let ring = unsafe { (P::ops().back_new)(page.as_ptr().cast(), len, start) };
            Self {
                ring: NonNull::new(ring).expect("calloc failed"),
                _proto: PhantomData,
            }
        }

        fn ptr(&self) -> *mut c_void {
            self.ring.as_ptr()
        }

        /// `RING_SIZE`.
        pub fn size(&self) -> u32 {
            // SAFETY: `ring` is live private state over a valid page (constructor contract).
            unsafe { (P::ops().back_size)(self.ptr()) }
        }

        /// Copies out and consumes the next request, if any.
        ///
        /// # Errors
        /// [`ProdOverflow`] if `RING_REQUEST_PROD_OVERFLOW` holds for the shared `req_prod`.
        pub fn read_request(&mut self) -> Result<Option<P::Req>, ProdOverflow> {
            let mut req = P::Req::new_zeroed();
            // SAFETY: as in `size`; `req` is a whole request the C side overwrites.
            let r = unsafe { (P::ops().back_read)(self.ptr(), (&mut req as *mut P::Req).cast()) };
            match r {
                1 => Ok(Some(req)),
                0 => Ok(None),
                _ => Err(ProdOverflow),
            }
        }

        /// `RING_HAS_UNCONSUMED_REQUESTS`.
        pub fn unconsumed_requests(&self) -> u32 {
            // SAFETY: as in `size`.
            unsafe { (P::ops().back_unconsumed)(self.ptr()) }
        }

        /// Queues `rsp` at `rsp_prod_pvt`. ring.h does no check: the caller answers only requests it read.
        pub fn write_response(&mut self, rsp: &P::Rsp) {
            // SAFETY: as in `size`; `rsp` points to a whole response the C side copies.
            unsafe { (P::ops().back_write)(self.ptr(), (rsp as *const P::Rsp).cast()) }
        }

        /// `RING_PUSH_RESPONSES`.
        pub fn push_responses(&mut self) {
            // SAFETY: as in `size`.
            unsafe { (P::ops().back_push)(self.ptr()) }
        }

        /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
        pub fn push_responses_and_check_notify(&mut self) -> bool {
            // SAFETY: as in `size`.
            unsafe { (P::ops().back_push_notify)(self.ptr()) != 0 }
        }

        /// `RING_FINAL_CHECK_FOR_REQUESTS`.
        pub fn final_check_for_requests(&mut self) -> bool {
            // SAFETY: as in `size`.
            unsafe { (P::ops().back_final_check)(self.ptr()) != 0 }
        }
    }

    impl<P: Proto> Drop for CFront<P> {
        fn drop(&mut self) {
            // SAFETY: `ring` came from calloc in ring_peer.c and is freed once.
            unsafe { pv_ring_free(self.ptr()) }
        }
    }

    impl<P: Proto> Drop for CBack<P> {
        fn drop(&mut self) {
            // SAFETY: `ring` came from calloc in ring_peer.c and is freed once.
            unsafe { pv_ring_free(self.ptr()) }
        }
    }
}

/// The console and XenStore byte rings as a C peer writes them from console.h's and xs_wire.h's
/// descriptions (`tests/c/ring_peer.c`).
pub mod byte_ring {
    use std::ffi::{c_char, c_long};
    use std::ptr::NonNull;

    use ring_protocol::abi::console::XenconsInterface;
    use ring_protocol::abi::xenstore::XenstoreDomainInterface;

    unsafe extern "C" {
        fn pv_cons_guest_write(intf: *mut XenconsInterface, data: *const c_char, len: usize) -> c_long;
        fn pv_cons_guest_read(intf: *mut XenconsInterface, buf: *mut c_char, len: usize) -> c_long;
        fn pv_cons_backend_write(intf: *mut XenconsInterface, data: *const c_char, len: usize) -> c_long;
        fn pv_cons_backend_read(intf: *mut XenconsInterface, buf: *mut c_char, len: usize) -> c_long;
        fn pv_xs_guest_write(intf: *mut XenstoreDomainInterface, data: *const c_char, len: usize) -> c_long;
        fn pv_xs_guest_read(intf: *mut XenstoreDomainInterface, buf: *mut c_char, len: usize) -> c_long;
        fn pv_xs_daemon_write(intf: *mut XenstoreDomainInterface, data: *const c_char, len: usize) -> c_long;
        fn pv_xs_daemon_read(intf: *mut XenstoreDomainInterface, buf: *mut c_char, len: usize) -> c_long;
    }

    /// A page type with two byte rings, and the C functions for each of its ends.
    pub trait BytePage {
        /// The guest's end: (write, read).
        const GUEST: (WriteFn<Self>, ReadFn<Self>);
        /// The other end (console backend, XenStore daemon): (write, read).
        const PEER: (WriteFn<Self>, ReadFn<Self>);
    }

    /// A C write function over page `P`.
    pub type WriteFn<P> = unsafe extern "C" fn(*mut P, *const c_char, usize) -> c_long;
    /// A C read function over page `P`.
    pub type ReadFn<P> = unsafe extern "C" fn(*mut P, *mut c_char, usize) -> c_long;

    impl BytePage for XenconsInterface {
        const GUEST: (WriteFn<Self>, ReadFn<Self>) = (pv_cons_guest_write, pv_cons_guest_read);
        const PEER: (WriteFn<Self>, ReadFn<Self>) = (pv_cons_backend_write, pv_cons_backend_read);
    }

    impl BytePage for XenstoreDomainInterface {
        const GUEST: (WriteFn<Self>, ReadFn<Self>) = (pv_xs_guest_write, pv_xs_guest_read);
        const PEER: (WriteFn<Self>, ReadFn<Self>) = (pv_xs_daemon_write, pv_xs_daemon_read);
    }

    /// The C side's indices were inconsistent (`prod - cons` larger than the ring).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Overrun;

    /// One end of a byte-ring page driven by C.
    #[derive(Debug)]
    pub struct CByteEnd<P: BytePage> {
        page: NonNull<P>,
        write: WriteFn<P>,
        read: ReadFn<P>,
    }

    impl<P: BytePage> CByteEnd<P> {
        /// The guest's end (`guest == true`) or the other end of `page`.
        ///
        /// # Safety
        /// `page` must stay valid for the life of the value, and nothing may access it while a
        /// method runs.
        pub unsafe fn new(page: NonNull<P>, guest: bool) -> Self {
            let (write, read) = if guest { P::GUEST } else { P::PEER };
            Self { page, write, read }
        }

        /// Writes as much of `data` as fits; returns the bytes written.
        ///
        /// # Errors
        /// [`Overrun`] if the page's indices are inconsistent.
        pub fn write(&mut self, data: &[u8]) -> Result<usize, Overrun> {
            // SAFETY: the page is valid and not otherwise accessed (constructor contract); `data` is
            // readable for its length.
            let n = unsafe { (self.write)(self.page.as_ptr(), data.as_ptr().cast(), data.len()) };
            usize::try_from(n).map_err(|_| Overrun)
        }

        /// Reads up to `buf.len()` bytes; returns the bytes read.
        ///
        /// # Errors
        /// [`Overrun`] if the page's indices are inconsistent.
        pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Overrun> {
            // SAFETY: as in `write`; `buf` is writable for its length.
            let n = unsafe { (self.read)(self.page.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            usize::try_from(n).map_err(|_| Overrun)
        }
    }
}
