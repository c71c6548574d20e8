//! The host side of a run with I/O devices: disk images and echo peers before QEMU starts; after it
//! exits, the host's own checks (image contents, peer counts against the guest's) and the cost per
//! operation from QEMU's trace.
//!
//! Workload parameters the host must know (`<test>.seed=`, `<test>.extents=`) are read from the
//! kernel command line; absent ones have the guest's defaults (guest-kernel/README.md).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::console::{Fields, Record, Transcript};
use crate::costs::{Cost, Scope, device_of_test};
use crate::disk::{DiskImage, SECTOR};
use crate::peer::Peer;
use crate::peer::console_echo::{self, ConsoleStats};
use crate::peer::net_echo::{self, NetStats};
use crate::qemu::{Backend, Device, DiskAttach, IoAttach};
use crate::trace;

/// Sectors of each disk image (16 MiB: room for the integrity extents and random 64 KiB I/O).
pub const DISK_SECTORS: u64 = 32 * 1024;
/// The guest's defaults.
const DEFAULT_SEED: u64 = pvkit_frontends::workload::defaults::SEED;
const DEFAULT_EXTENTS: u64 = pvkit_frontends::workload::defaults::INTEGRITY_EXTENTS as u64;
/// Upper bounds for the peers (far above any scenario; they only stop a runaway).
const MAX_FRAMES: u64 = 10_000_000;
const MAX_CONSOLE_BYTES: u64 = 64 << 20;

/// `<test>.<key>=<value>` from a kernel command line.
pub fn param(cmdline: &str, test: &str, key: &str) -> Option<u64> {
    let prefix = format!("{test}.{key}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(crate::console::parse_u64)
}

/// The `tests=` list of a kernel command line.
pub fn tests_of(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tests="))
        .map(|l| l.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Resources of one run.
#[derive(Debug)]
pub struct Rig {
    pub io: IoAttach,
    cmdline: String,
    disks: BTreeMap<Device, DiskImage>,
    net: BTreeMap<Device, Peer<NetStats>>,
    console: BTreeMap<Device, Peer<ConsoleStats>>,
    trace: Option<PathBuf>,
}

/// What the host saw of a finished run.
#[derive(Debug)]
pub struct Results {
    cmdline: String,
    pub disks: BTreeMap<Device, DiskImage>,
    pub net: BTreeMap<Device, NetStats>,
    pub console: BTreeMap<Device, ConsoleStats>,
    pub trace: Option<PathBuf>,
}

impl Rig {
    /// Images in `dir` named `<tag>-<device>.img`; `fail_writes` makes every disk refuse writes.
    /// Peers give up at `deadline`. With `trace`, QEMU writes its trace there.
    pub fn start(
        devices: &[Device],
        cmdline: &str,
        dir: &Path,
        tag: &str,
        fail_writes: bool,
        deadline: Instant,
        trace: Option<PathBuf>,
    ) -> Result<Rig> {
        let mut rig = Rig {
            io: IoAttach::default(),
            cmdline: cmdline.to_owned(),
            disks: BTreeMap::new(),
            net: BTreeMap::new(),
            console: BTreeMap::new(),
            trace,
        };
        let seed_for = |workload: &str, d: Device| {
            param(cmdline, &format!("{workload}@{}", d.name()), "seed").unwrap_or(DEFAULT_SEED)
        };
        for (i, &d) in devices.iter().enumerate() {
            match d.backend() {
                Backend::None => {}
                Backend::Disk => {
                    let path = dir.join(format!("{tag}-{}.img", d.name()));
                    let img = DiskImage::create(&path, DISK_SECTORS, 0x5eed_0000 + i as u64)?;
                    rig.io.disks.insert(d, DiskAttach { path, fail_writes });
                    rig.disks.insert(d, img);
                }
                Backend::Net => {
                    let peer = net_echo::start(seed_for("net-echo", d), MAX_FRAMES, deadline)
                        .with_context(|| format!("starting the net echo peer for {}", d.name()))?;
                    rig.io.ports.insert(d, peer.port);
                    rig.net.insert(d, peer);
                }
                Backend::Console => {
                    let peer = console_echo::start(seed_for("console-echo", d), MAX_CONSOLE_BYTES, deadline)
                        .with_context(|| format!("starting the console echo peer for {}", d.name()))?;
                    rig.io.ports.insert(d, peer.port);
                    rig.console.insert(d, peer);
                }
            }
        }
        Ok(rig)
    }

    /// Stops the peers (QEMU has exited) and collects what they saw.
    pub fn finish(self) -> Results {
        Results {
            cmdline: self.cmdline,
            disks: self.disks,
            net: self.net.into_iter().map(|(d, p)| (d, p.finish())).collect(),
            console: self.console.into_iter().map(|(d, p)| (d, p.finish())).collect(),
            trace: self.trace,
        }
    }
}

/// A passed workload test's fields.
fn pass_fields<'a>(t: &'a Transcript, test: &str) -> Option<&'a Fields> {
    match t.verdict(test) {
        Some(Record::TestPass { fields, .. }) => Some(fields),
        _ => None,
    }
}

impl Results {
    /// The host's checks of every workload test that passed in the guest: what the guest claims
    /// must match what the host saw. Returns the problems and a line per check done.
    pub fn check(&self, t: &Transcript) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        let mut done = Vec::new();
        let tests = tests_of(&self.cmdline);
        let writers = |d: Device| {
            tests
                .iter()
                .filter(|n| device_of_test(n) == Some(d) && !n.starts_with("blk-error@"))
                .count()
        };
        for name in &tests {
            let Some(d) = device_of_test(name) else { continue };
            let Some(f) = pass_fields(t, name) else { continue };
            let (workload, _) = name.split_once('@').expect("device tests have an @");
            let seed = param(&self.cmdline, name, "seed").unwrap_or(DEFAULT_SEED);
            match workload {
                "blk-integrity" => {
                    let Some(img) = self.disks.get(&d) else {
                        problems.push(format!("{name}: xtask attached no image to check"));
                        continue;
                    };
                    let extents = param(&self.cmdline, name, "extents").unwrap_or(DEFAULT_EXTENTS);
                    let only_writer = writers(d) == 1;
                    match img.verify_integrity(seed, extents as usize, only_writer) {
                        Ok(c) => {
                            let want = 2 * c.sectors_written * SECTOR as u64;
                            if f.get_u64("bytes") != Some(want) {
                                problems.push(format!(
                                    "{name}: guest reports bytes={:?}, the {} extents it writes and reads back \
                                     are {want} bytes",
                                    f.get("bytes"),
                                    c.extents
                                ));
                            }
                            done.push(format!(
                                "{name}: image {} holds the guest's pattern in all {} sectors of {} extents \
                                 (crc32 {:#010x}){}",
                                img.path.display(),
                                c.sectors_written,
                                c.extents,
                                c.crc32,
                                if only_writer {
                                    ", every other sector untouched"
                                } else {
                                    " (other tests wrote this disk too: other sectors not checked)"
                                }
                            ));
                        }
                        Err(e) => problems.push(format!("{name}: {e:#}")),
                    }
                }
                "blk-error" => match self.disks.get(&d).map(DiskImage::verify_unchanged) {
                    Some(Ok(())) => done.push(format!("{name}: image unchanged after the refused write")),
                    Some(Err(e)) => problems.push(format!("{name}: {e:#}")),
                    None => problems.push(format!("{name}: xtask attached no image to check")),
                },
                "net-echo" => {
                    let Some(st) = self.net.get(&d) else {
                        problems.push(format!("{name}: no net peer"));
                        continue;
                    };
                    let dev_name = f.get("dev").map(str::to_owned);
                    let rate: u64 = t
                        .perfs()
                        .filter(|p| {
                            p.get("pattern").is_some_and(|p| p.starts_with("echo"))
                                && p.get("dev").map(str::to_owned).or(dev_name.clone()).as_deref()
                                    == Some(&d.name())
                        })
                        .filter_map(|p| p.get_u64("ops"))
                        .sum();
                    let guest = f.get_u64("ops").unwrap_or(0) + rate;
                    if !st.connected {
                        problems.push(format!("{name}: QEMU never connected to the net peer"));
                    }
                    for p in &st.problems {
                        problems.push(format!("{name}: net peer: {p}"));
                    }
                    if st.verified != guest || st.echoed != guest {
                        problems.push(format!(
                            "{name}: guest says {guest} frames echoed and verified, the peer verified {} and \
                             echoed {} of {} received",
                            st.verified, st.echoed, st.received
                        ));
                    } else {
                        done.push(format!(
                            "{name}: peer received {} frames, verified {} ({} data bytes) and echoed {}; guest \
                             verified {guest}",
                            st.received, st.verified, st.data_checked, st.echoed
                        ));
                    }
                }
                "console-echo" => {
                    let Some(st) = self.console.get(&d) else {
                        problems.push(format!("{name}: no console peer"));
                        continue;
                    };
                    let sent = f.get_u64("bytes").unwrap_or(0) / 2;
                    if let Some(p) = &st.problem {
                        problems.push(format!("{name}: console peer: {p}"));
                    }
                    if st.received != sent || st.verified != sent || st.echoed != sent {
                        problems.push(format!(
                            "{name}: guest sent {sent} bytes and verified their echo, the peer received {}, \
                             verified {} and echoed {}",
                            st.received, st.verified, st.echoed
                        ));
                    } else {
                        done.push(format!("{name}: peer received, verified and echoed {sent} bytes"));
                    }
                }
                _ => {}
            }
        }
        (problems, done)
    }

    /// The costs of the run from its trace: one per PERF line (its phase) and one per passed
    /// workload test without PERF lines (the whole test). Also writes them, raw, to `costs_file`.
    pub fn costs(&self, t: &Transcript, costs_file: &Path) -> Result<(Vec<Cost>, Vec<String>)> {
        let Some(path) = &self.trace else {
            return Ok((Vec::new(), Vec::new()));
        };
        let f = File::open(path).with_context(|| format!("opening QEMU trace {}", path.display()))?;
        let tr = trace::parse(BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("reading QEMU trace {}", path.display()))?;
        let mut problems = Vec::new();
        let mut costs = Vec::new();
        let perfs: Vec<&Fields> = t.perfs().collect();
        if perfs.len() != tr.phases.len() {
            problems.push(format!(
                "{} PERF lines but {} phase markers in the trace",
                perfs.len(),
                tr.phases.len()
            ));
        }
        for (f, (n, c)) in perfs.iter().zip(&tr.phases) {
            let dev = f.get("dev").unwrap_or("?");
            costs.push(Cost::new(Scope::Phase(*n), dev, "?", f, c));
        }
        let mut used = vec![false; tr.tests.len()];
        for name in tests_of(&self.cmdline) {
            let Some(d) = device_of_test(&name) else { continue };
            let Some(f) = pass_fields(t, &name) else { continue };
            // Throughput and console-echo figures are their phases' (the PERF lines).
            if f.get_u64("ops").is_none()
                || name.starts_with("blk-throughput@")
                || name.starts_with("console-echo@")
            {
                continue;
            }
            let Some(i) = tr
                .tests
                .iter()
                .enumerate()
                .position(|(i, (n, _))| !used[i] && *n == name)
            else {
                problems.push(format!(
                    "{name} passed but its START/PASS lines are not in the trace"
                ));
                continue;
            };
            used[i] = true;
            let (workload, _) = name.split_once('@').expect("device tests have an @");
            costs.push(Cost::new(
                Scope::Test(name.clone()),
                &d.name(),
                workload,
                f,
                &tr.tests[i].1,
            ));
        }
        for c in &costs {
            problems.extend(c.problems());
        }
        if tr.unparsed > 0 {
            problems.push(format!("{} trace lines not understood", tr.unparsed));
        }
        let mut out =
            File::create(costs_file).with_context(|| format!("creating {}", costs_file.display()))?;
        writeln!(
            out,
            "# raw cost counts per phase / test; trace {} ({} lines)",
            path.display(),
            tr.lines
        )?;
        for c in &costs {
            writeln!(out, "{}", c.raw())?;
        }
        Ok((costs, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_frontends::workload::blk::{IntegrityParams, fill_sector, integrity_extents};
    use pvkit_frontends::workload::mix;

    fn transcript(lines: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        for l in lines {
            t.push_line(l);
        }
        t
    }

    fn results(cmdline: &str) -> Results {
        Results {
            cmdline: cmdline.to_owned(),
            disks: BTreeMap::new(),
            net: BTreeMap::new(),
            console: BTreeMap::new(),
            trace: None,
        }
    }

    #[test]
    fn command_line_parameters() {
        let c = "tests=hello,net-echo@e1000 net-echo@e1000.seed=0x10 net-echo@e1000x.seed=3";
        assert_eq!(tests_of(c), vec!["hello", "net-echo@e1000"]);
        assert_eq!(param(c, "net-echo@e1000", "seed"), Some(16));
        assert_eq!(param(c, "net-echo@e1000", "frames"), None);
        assert!(tests_of("hello.mem_mib=1").is_empty());
    }

    #[test]
    fn peer_counts_must_match_the_guests() {
        let t = transcript(&[
            "PVKIT PERF dev=e1000 pattern=echo64 qd=8 mode=irq ops=100 bytes=12000",
            "PVKIT TEST net-echo@e1000 PASS ops=200 bytes=316138",
            "PVKIT TEST console-echo@uart PASS ops=9 bytes=16384",
        ]);
        let mut r = results("tests=net-echo@e1000,console-echo@uart");
        let net = NetStats {
            connected: true,
            received: 300,
            verified: 300,
            echoed: 300,
            ..NetStats::default()
        };
        r.net.insert(Device::E1000, net.clone());
        let console = ConsoleStats {
            connected: true,
            received: 8192,
            echoed: 8192,
            verified: 8192,
            problem: None,
        };
        r.console.insert(Device::Uart, console.clone());
        let (problems, done) = r.check(&t);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(done.len(), 2, "{done:?}");

        // One frame the guest counted never reached the peer; one byte differed.
        r.net.insert(Device::E1000, NetStats { verified: 299, ..net });
        r.console.insert(
            Device::Uart,
            ConsoleStats {
                verified: 100,
                problem: Some("byte 100 differs".into()),
                ..console
            },
        );
        let (problems, _) = r.check(&t);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("peer verified 299"), "{problems:?}");
    }

    #[test]
    fn integrity_is_checked_on_the_image() {
        let dir = std::env::temp_dir().join(format!("pvkit-xtask-rig-{}", std::process::id()));
        let img = DiskImage::create(&dir.join("d.img"), 4096, 1).unwrap();
        let cmdline = "tests=blk-integrity@ahci blk-integrity@ahci.seed=5 blk-integrity@ahci.extents=16";
        let p = IntegrityParams {
            seed: 5,
            nonce: 77,
            random_extents: 16,
            ..IntegrityParams::default()
        };
        let key = mix(5 ^ mix(77));
        let mut data = std::fs::read(&img.path).unwrap();
        let mut sectors = 0u64;
        for j in integrity_extents(4096, &p).unwrap() {
            for s in j.sector..j.sector + u64::from(j.sectors) {
                fill_sector(key, s, &mut data[s as usize * SECTOR..][..SECTOR]);
                sectors += 1;
            }
        }
        std::fs::write(&img.path, &data).unwrap();
        let mut r = results(cmdline);
        r.disks.insert(Device::Ahci, img);
        let good = format!(
            "PVKIT TEST blk-integrity@ahci PASS ops=1 bytes={}",
            2 * sectors * SECTOR as u64
        );
        let (problems, done) = r.check(&transcript(&[&good]));
        assert_eq!(problems, Vec::<String>::new());
        assert!(done[0].contains("every other sector untouched"), "{done:?}");
        // The guest claims other figures than the extents it must have written.
        let (problems, _) = r.check(&transcript(&[
            "PVKIT TEST blk-integrity@ahci PASS ops=1 bytes=512",
        ]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        // A failed test is not checked on the host (its FAIL line already fails the scenario).
        let (problems, done) = r.check(&transcript(&["PVKIT TEST blk-integrity@ahci FAIL x"]));
        assert!(problems.is_empty() && done.is_empty());
    }
}
