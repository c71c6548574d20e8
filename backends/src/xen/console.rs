//! The console backend: a secondary PV console (`io/console.h`) written to a [`ConsoleSink`].
//!
//! The domain's first console (the one in `start_info`, `hvc0` in Linux) is xenconsoled's business;
//! this serves xenbus devices of kind `console` with ids from 1 (Linux's `hvc_xen` refuses id 0 and,
//! since it takes the id from the node name's last character, only handles ids 1 to 9; it shows
//! device `n` as the next free `hvcN`, `hvc1` for the first).
//!
//! The frontend shares one page (`struct xencons_interface`: an `in` ring of 1024 bytes towards the
//! guest and an `out` ring of 2048 bytes from it) and publishes `ring-ref` (the page's grant) and
//! `port` (an event channel it allocated for dom0), then says `Initialised`; it reads no backend key.
//! The backend maps the page writable, reads every byte the guest produced into one buffer and hands
//! that batch to the sink in one write, and feeds the `in` ring from the device's input text (given
//! once, sent from the moment the device connects, as much as fits and the rest whenever the guest
//! frees space). After moving bytes either way it notifies the frontend. Indices that claim more bytes
//! than a ring holds halt this device (the byte ring's check); a sink that fails only loses output,
//! counted in the summary and logged at a bounded rate. A log file sink is normally capped
//! ([`ConsoleSink::file_capped`]: rotated to one `.1` file), so a guest that prints without end
//! occupies a bounded amount of the host's disk.
//!
//! In echo mode the backend also writes every byte it reads back to the guest (after the input
//! text, if any), as a peer for the guest's console echo workload. The bytes waiting to go back are
//! bounded ([`ECHO_BACKLOG`]): once that many wait, the backend reads no more of the guest's output
//! until the guest takes some, so a guest that writes without reading only fills its own ring.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use ring_protocol::abi::console::{XENCONS_OUT_SIZE, XenconsInterface};
use ring_protocol::byte_ring::{Duplex, console_backend};

use super::evtchn::EventChannel;
use super::gntdev::GntDev;
use super::xenbus::{Backend, Connected, DeviceId, Engine, Frontend, Notify};
use super::{Error, Result};
use crate::console::ConsoleSink;
use crate::ratelimit::{RateLimit, limited_info, limited_warn};

/// Most echoed bytes waiting for room in the guest's `in` ring (echo mode).
pub const ECHO_BACKLOG: usize = 64 * 1024;

/// A secondary console of one domain.
#[derive(Debug)]
pub struct ConsoleBackend {
    gnt: Arc<GntDev>,
    sink: Arc<Mutex<ConsoleSink>>,
    /// Input not yet handed to a connection (taken by the first one).
    input: Mutex<Option<Vec<u8>>>,
    /// Write every byte read back to the guest.
    echo: bool,
    /// The device's log budget, across its connections.
    log: Arc<RateLimit>,
}

impl ConsoleBackend {
    /// A console whose output goes to `sink` and whose guest is sent `input` (if any) once it
    /// connects; with `echo`, also everything the guest writes.
    pub fn new(gnt: Arc<GntDev>, sink: ConsoleSink, input: Option<Vec<u8>>, echo: bool) -> Self {
        ConsoleBackend {
            gnt,
            sink: Arc::new(Mutex::new(sink)),
            input: Mutex::new(input.filter(|i| !i.is_empty())),
            echo,
            log: Arc::new(RateLimit::default()),
        }
    }
}

impl Backend for ConsoleBackend {
    type Engine = Pump;

    fn frontend_keys(&self, _id: &DeviceId) -> Vec<(String, String)> {
        Vec::new()
    }

    fn backend_keys(&self, _id: &DeviceId) -> Vec<(String, String)> {
        vec![("type".into(), "pvkit".into())]
    }

    fn frontend_reads(&self, _: &Frontend) -> Vec<String> {
        vec!["ring-ref".into(), "port".into()]
    }

    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Connected<Pump>> {
        if id.devid == 0 {
            return Err(Error::StartInfoConsole);
        }
        let gref = front.grant_ref("ring-ref")?;
        let port = front.port("port")?;
        let map = self
            .gnt
            .map(id.domid, &[gref], true)
            .map_err(|error| Error::GrantMap {
                what: "console page",
                key: "ring-ref",
                refs: vec![gref],
                error,
            })?;
        if map.len() < size_of::<XenconsInterface>() {
            return Err(Error::MappingTooSmall {
                what: "console page",
                bytes: map.len(),
                need: size_of::<XenconsInterface>(),
            });
        }
        let intf: NonNull<XenconsInterface> = map.as_ptr().cast();
        // SAFETY: the mapping is at least one `XenconsInterface` long (checked) and page-aligned; it
        // lives in the same `ConsoleRings` as the rings (declared after them, so dropped after them);
        // only these two ring ends touch it in this process, with atomics; the frontend is outside the
        // Rust memory model.
        let ring = unsafe { console_backend(intf) }.map_err(|error| Error::RingUnusable {
            what: "console page",
            bytes: map.len(),
            error,
        })?;
        let channel =
            EventChannel::bind_interdomain(id.domid, port).map_err(|error| Error::BindEventChannel {
                key: "port",
                port,
                domid: id.domid,
                error,
            })?;
        let input = self
            .input
            .lock()
            .map_err(|_| Error::Poisoned("console input"))?
            .take()
            .unwrap_or_default();
        limited_info!(
            self.log,
            device = %id,
            gref,
            port,
            local_port = channel.local_port(),
            input_bytes = input.len(),
            echo = self.echo,
            "console page mapped"
        );
        Ok(Connected::new(
            Pump::new(ring, self.sink.clone(), input, self.echo, self.log.clone()),
            vec![map],
            channel,
        ))
    }
}

/// What moved in one [`Pump::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Moved {
    out: usize,
    inp: usize,
}

#[derive(Debug, Default)]
struct Counts {
    bytes_out: u64,
    bytes_in: u64,
    batches: u64,
    sink_errors: u64,
    lost_out: u64,
    echoed: u64,
}

/// The console engine: the byte moving between the shared page and the sink, apart from the event
/// channel (so tests can drive it over a local page).
pub struct Pump {
    ring: Duplex,
    sink: Arc<Mutex<ConsoleSink>>,
    /// Input still to send, from `input_at` (in echo mode the echoed bytes are appended).
    input: Vec<u8>,
    input_at: usize,
    echo: bool,
    buf: Box<[u8; XENCONS_OUT_SIZE]>,
    counts: Counts,
    /// Notifications sent to the frontend.
    notifies: u64,
    log: Arc<RateLimit>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("input_left", &(self.input.len() - self.input_at))
            .field("echo", &self.echo)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Pump {
    /// The console engine over `ring` (the backend end of the console page, however it is
    /// reached): the guest's output goes to `sink`, `input` is typed into the guest's input ring,
    /// and with `echo` every byte of output is sent back as input too. Guest-caused log lines go
    /// through `log`. Drive it with [`Engine::process`] whenever the frontend sent an event.
    pub fn new(
        ring: Duplex,
        sink: Arc<Mutex<ConsoleSink>>,
        input: Vec<u8>,
        echo: bool,
        log: Arc<RateLimit>,
    ) -> Self {
        Pump {
            ring,
            sink,
            input,
            input_at: 0,
            echo,
            buf: Box::new([0; XENCONS_OUT_SIZE]),
            counts: Counts::default(),
            notifies: 0,
            log,
        }
    }

    /// Moves what it can once: all of the guest's output into the sink (one write), as much input
    /// as fits into the guest's ring. An error means the frontend's indices are impossible.
    fn step(&mut self) -> Result<Moved> {
        let halted = |error| Error::RingHalted {
            ring: "console ring",
            error,
        };
        // In echo mode take only what the backlog can hold; the rest waits in the guest's ring.
        let room = if self.echo {
            ECHO_BACKLOG
                .saturating_sub(self.input.len() - self.input_at)
                .min(self.buf.len())
        } else {
            self.buf.len()
        };
        let out = self.ring.rx.read(&mut self.buf[..room]).map_err(halted)?.bytes;
        if out > 0 && self.echo {
            self.input.drain(..self.input_at);
            self.input_at = 0;
            self.input.extend_from_slice(&self.buf[..out]);
            self.counts.echoed += out as u64;
        }
        if out > 0 {
            self.counts.bytes_out += out as u64;
            self.counts.batches += 1;
            let r = self
                .sink
                .lock()
                .map_err(|_| Error::Poisoned("console sink"))?
                .write(&self.buf[..out]);
            if let Err(e) = r {
                self.counts.sink_errors += 1;
                self.counts.lost_out += out as u64;
                limited_warn!(self.log, "console output lost: {e}");
            }
        }
        let mut inp = 0;
        if self.input_at < self.input.len() {
            inp = self
                .ring
                .tx
                .write(&self.input[self.input_at..])
                .map_err(halted)?
                .bytes;
            self.input_at += inp;
            self.counts.bytes_in += inp as u64;
        }
        Ok(Moved { out, inp })
    }
}

impl Engine for Pump {
    fn process(&mut self, notify: &dyn Notify) -> Result<()> {
        // The guest may write more while its last batch goes to the sink: go on until a round moves
        // nothing (each round frees space, so a guest waiting for it is notified in between).
        loop {
            let moved = self.step()?;
            if moved == Moved::default() {
                return Ok(());
            }
            notify.notify().map_err(Error::Notify)?;
            self.notifies += 1;
        }
    }

    fn summary(&self, events: u64) -> String {
        let c = &self.counts;
        let sink = self.sink.lock().map(|s| s.counts()).unwrap_or_default();
        format!(
            "bytes_out={} bytes_in={} input_left={} batches={} sink_errors={} lost_out={} \
             log_rotations={} log_dropped={} events={} notifies={} echoed={}",
            c.bytes_out,
            c.bytes_in,
            self.input.len() - self.input_at,
            c.batches,
            c.sink_errors,
            c.lost_out,
            sink.rotations,
            sink.dropped,
            events,
            self.notifies,
            c.echoed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_protocol::abi::console::XENCONS_IN_SIZE;
    use ring_protocol::byte_ring::console_guest;
    use zerocopy::FromZeros;

    /// A console page with both ends, the backend's pump writing to a log file.
    struct Page {
        intf: NonNull<XenconsInterface>,
        guest: Duplex,
        pump: Pump,
        log: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn page(input: &[u8]) -> Page {
        page_with(input, false)
    }

    fn page_with(input: &[u8], echo: bool) -> Page {
        // Leaked: the page must outlive both ends, whatever order a test drops things in.
        let intf = NonNull::from(Box::leak(Box::new(XenconsInterface::new_zeroed())));
        // SAFETY: the page lives for the rest of the process and is accessed only through these two
        // ends and, in the lying-index test, one aligned write (single-threaded) playing the guest.
        let guest = unsafe { console_guest(intf) }.unwrap();
        // SAFETY: as above; this is the page's only backend end.
        let back = unsafe { console_backend(intf) }.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hvc1.log");
        let sink = Arc::new(Mutex::new(ConsoleSink::file_capped(&log, 64 * 1024).unwrap()));
        Page {
            intf,
            guest,
            pump: Pump::new(back, sink, input.to_vec(), echo, Arc::new(RateLimit::default())),
            log,
            _dir: dir,
        }
    }

    #[test]
    fn guest_output_reaches_the_log_in_order_across_wraps() {
        let mut p = page(b"");
        let mut sent = Vec::new();
        for round in 0..7u32 {
            // 1500 bytes a round: the ring (2048) wraps every other round.
            let chunk: Vec<u8> = (0..1500u32).map(|i| (i * 7 + round) as u8).collect();
            assert_eq!(p.guest.tx.write(&chunk).unwrap().bytes, chunk.len());
            let m = p.pump.step().unwrap();
            assert_eq!(m, Moved { out: 1500, inp: 0 });
            sent.extend(chunk);
        }
        assert_eq!(p.pump.step().unwrap(), Moved::default());
        assert_eq!(std::fs::read(&p.log).unwrap(), sent);
        assert_eq!(p.pump.counts.bytes_out, 7 * 1500);
        assert_eq!(p.pump.counts.batches, 7);
    }

    #[test]
    fn input_larger_than_the_ring_arrives_whole_as_the_guest_reads() {
        let input: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut p = page(&input);
        let mut got = Vec::new();
        let mut buf = [0u8; 600];
        let first = p.pump.step().unwrap();
        assert_eq!(first.inp, XENCONS_IN_SIZE, "the first step fills the in ring");
        loop {
            let n = p.guest.rx.read(&mut buf).unwrap().bytes;
            got.extend_from_slice(&buf[..n]);
            if p.pump.step().unwrap() == Moved::default() && n == 0 {
                break;
            }
        }
        assert_eq!(got, input);
        assert_eq!(p.pump.counts.bytes_in, 3000);
        assert_eq!(p.pump.input_at, p.pump.input.len());
    }

    #[test]
    fn echo_mode_sends_every_byte_back_after_the_input_and_logs_it() {
        let mut p = page_with(b"hi\n", true);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        let mut buf = [0u8; 900];
        while got.len() < 3 + data.len() {
            sent += p.guest.tx.write(&data[sent..]).unwrap().bytes;
            p.pump.step().unwrap();
            let n = p.guest.rx.read(&mut buf).unwrap().bytes;
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..3], b"hi\n", "the input text first");
        assert_eq!(&got[3..], &data[..], "then every byte the guest wrote, in order");
        assert_eq!(p.pump.counts.echoed, data.len() as u64);
        assert_eq!(p.pump.counts.bytes_in, 3 + data.len() as u64);
        assert_eq!(
            std::fs::read(&p.log).unwrap(),
            data,
            "echoed output is logged too"
        );
        assert!(p.pump.summary(0).ends_with(&format!("echoed={}", data.len())));
    }

    #[test]
    fn echo_backlog_is_bounded_when_the_guest_does_not_read() {
        let mut p = page_with(b"", true);
        let chunk = [0x5au8; 1500];
        // The guest writes and never reads: the backend holds at most ECHO_BACKLOG bytes, then
        // leaves the rest in the guest's ring, which fills up.
        let mut written = 0;
        for _ in 0..200 {
            written += p.guest.tx.write(&chunk).unwrap().bytes;
            p.pump.step().unwrap();
            assert!(p.pump.input.len() - p.pump.input_at <= ECHO_BACKLOG);
        }
        assert_eq!(p.pump.counts.echoed as usize, ECHO_BACKLOG + XENCONS_IN_SIZE);
        assert_eq!(
            written,
            ECHO_BACKLOG + XENCONS_IN_SIZE + XENCONS_OUT_SIZE,
            "backlog, the guest's in ring and its full out ring"
        );
        assert_eq!(p.guest.tx.free_space().unwrap(), 0);
        // Once the guest reads, the echo resumes (the first step refills the in ring from the
        // backlog, the next takes more output; `process` runs steps until nothing moves).
        let mut buf = [0u8; 1024];
        assert_eq!(p.guest.rx.read(&mut buf).unwrap().bytes, 1024);
        p.pump.step().unwrap();
        p.pump.step().unwrap();
        assert!(p.pump.counts.echoed as usize > ECHO_BACKLOG + XENCONS_IN_SIZE);
    }

    #[test]
    fn a_lying_producer_index_halts_the_device() {
        let mut p = page(b"hello\n");
        assert_eq!(p.guest.tx.write(b"boot\n").unwrap().bytes, 5);
        assert_eq!(p.pump.step().unwrap(), Moved { out: 5, inp: 6 });
        // The guest claims 4000 new bytes in a 2048-byte ring.
        let out_prod = p
            .intf
            .cast::<u8>()
            .map_addr(|a| a.checked_add(3084).unwrap())
            .cast::<u32>();
        // SAFETY: `out_prod` is the page's aligned u32 at offset 3084 (the ABI layout); the test is
        // single-threaded and plays the guest writing its own index.
        unsafe { out_prod.write_volatile(5 + 4000) };
        let e = p.pump.step().unwrap_err();
        assert!(
            matches!(
                e,
                Error::RingHalted {
                    ring: "console ring",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("4005"), "{e}");
        assert!(p.pump.step().is_err(), "stays halted");
        assert_eq!(std::fs::read(&p.log).unwrap(), b"boot\n");
    }

    /// A guest printing 1 MiB through its console capped at 64 KiB: the host keeps at most two
    /// files of 64 KiB with the newest output, the pump counts every byte, the summary says how
    /// often the log rotated.
    #[test]
    fn console_log_cap_bounds_what_a_printing_guest_leaves_on_disk() {
        let mut p = page(b"");
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut sent = 0;
        while sent < data.len() {
            sent += p.guest.tx.write(&data[sent..]).unwrap().bytes;
            p.pump.step().unwrap();
        }
        while p.pump.step().unwrap() != Moved::default() {}
        assert_eq!(p.pump.counts.bytes_out, 1_048_576);
        let cur = std::fs::read(&p.log).unwrap();
        let old = std::fs::read(p.log.with_extension("log.1")).unwrap();
        assert!(cur.len() <= 64 * 1024 && old.len() <= 64 * 1024);
        let tail = [old.as_slice(), cur.as_slice()].concat();
        assert_eq!(&data[data.len() - tail.len()..], &tail[..]);
        let summary = Engine::summary(&p.pump, 0);
        assert!(summary.contains("log_dropped=0"), "{summary}");
        let rotations: u64 = summary
            .split("log_rotations=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(rotations >= 14, "{summary}");
    }
}
