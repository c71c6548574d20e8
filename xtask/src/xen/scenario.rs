//! The Xen PV rows of the matrix: what each row's domU is (kernel, command line, devices) and what
//! dom0 does around it. Everything here is derived from a [`Row`]; nothing names a scenario on its
//! own. What its report must show is `checks.rs`.

use std::time::Duration;

pub use super::domain::*;
use crate::matrix::{Backend, Profile, Row, Variant, Workload};
use crate::qemu_env::workload_params;

/// The guest tests of the block workloads.
pub(super) const BLK_TEST: &str = "blk-integrity@xen-blk";
pub(super) const HOSTILE_TEST: &str = "blk-hostile@xen-blk";
/// Sectors of the integrity disk (16 MiB, as on QEMU) and of the throughput disk (64 MiB: random
/// I/O spreads over more than the guest's memory).
pub(super) const BLK_SECTORS: u64 = 32 * 1024;
pub(super) const THROUGHPUT_SECTORS: u64 = 128 * 1024;
pub(super) const BLK_EXTENTS: u64 = 64;
pub(super) const BLK_FILL: u64 = 0x5eed_4e11;

/// The block workload's seed: derived from the run's nonce, so an old image cannot pass.
pub(super) fn blk_seed(nonce: &str) -> u64 {
    nonce.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) & 0xffff_ffff
}

/// The backend type of the stub vbd (no dom0 driver watches `backend/pvkit-stub`).
pub(super) const STUB_BACKEND: &str = "pvkit-stub";
/// The image path the bad-input row gives our daemon (it does not exist).
pub(super) const MISSING_IMAGE: &str = "/pvkit/no-such.img";
/// The vbd of the bad-input row whose "frontend" (dom0 playing a hostile guest) publishes a
/// garbage ring-ref, the garbage, and the image behind that vbd.
pub(super) const HOSTILE_VBD: u32 = 51728;
pub(super) const HOSTILE_RING_REF: u32 = 1_234_567;
pub(super) const HOSTILE_IMAGE: &str = "/tmp/hostile.img";

/// The console input test and the line it prints once it reads input.
pub(super) const CONSOLE_TEST: &str = "console-input@xen-console";
pub(super) const CONSOLE_READY: &str = "PVKIT INFO console-input ready";

/// The ping test, its echo requests and their payload size (a full 1500-byte frame).
pub(super) const NET_TEST: &str = "net-ping@xen-net";
pub(super) const NET_PINGS: u64 = 200;
pub(super) const NET_PING_SIZE: u64 = 1472;
/// The MAC of our guest's vif (Xen's OUI).
pub(super) const GUEST_MAC: &str = "00:16:3e:00:00:10";
/// dom0's echo peer binary.
pub const ECHO_PATH: &str = "/pvkit/pvkit-echo";
/// dom0's check that the platform keeps user programs' FS base, fresh pages and vector registers
/// (`xtask/xen/platform.rs`), run by `init.sh` through the whole boot.
pub const PLATFORM_WATCH_PATH: &str = "/pvkit/pvkit-platform-watch";

/// Timer parameters: not the guest's defaults, and a low rate, because a vCPU of a TCG machine on
/// a busy host stands still for up to ~170 ms at times (seen with load 7 on 2 cores: three
/// disturbed windows in a row at 50 Hz), and only a stall longer than one period loses ticks.
pub(super) const TIMER_HZ: u64 = 10;
pub(super) const TIMER_MS: u64 = 1000;

/// Sectors of the Linux rows' disk, their pings, and the Linux domU's MAC.
pub(super) const SELFCHECK_DISK_SECTORS: u64 = 2048;
pub(super) const SELFCHECK_PINGS: u32 = 3;
pub(super) const LINUX_DOMU_MAC: &str = "00:16:3e:00:00:02";

/// Kernel modules the Linux domU loads (from its initramfs, by path).
pub const LINUX_DOMU_MODULES: &[&str] = &["xen-blkfront", "xen-netfront"];

/// The domain name of a Xen row: its backend and workload (plus variant), e.g.
/// `pvkit-xen-blk-integrity`; platform rows are named after their workload alone (the xenstore
/// test compares its own name with the test's).
pub fn domain_name(row: &Row) -> String {
    let mut n = String::new();
    if row.backend != Backend::None || row.workload == Workload::LinuxPeer {
        n.push_str(row.backend.name());
        n.push('-');
    }
    n.push_str(row.workload.name());
    if let Some(v) = row.variant {
        n.push('-');
        n.push_str(v.name());
    }
    n
}

/// The line dom0 types into a domU's console, the line our console backend sends the Linux domU's
/// hvc1, the value dom0 writes to the key the xenstore test watches.
pub(super) fn console_input(nonce: &str) -> String {
    format!("pvkit-input-{nonce}")
}
pub(super) fn hvc1_input(nonce: &str) -> String {
    format!("pvkit-hvc1-input-{nonce}")
}
pub(super) fn xenstore_value(nonce: &str) -> String {
    format!("from-dom0-{nonce}")
}

/// The ping workload's command line (against dom0's kernel or our switch's echo peer, both at
/// [`DOM0_IP`]).
pub(super) fn net_ping_words() -> Vec<String> {
    let t = NET_TEST;
    vec![
        format!("{t}.ip={DOMU_IP}"),
        format!("{t}.peer={DOM0_IP}"),
        format!("{t}.count={NET_PINGS}"),
        format!("{t}.size={NET_PING_SIZE}"),
    ]
}

/// The guest tests a row's domU runs.
pub fn guest_tests(row: &Row) -> Vec<String> {
    match row.workload {
        Workload::DeviceAbsent | Workload::NoBackend => vec![BLK_TEST.to_owned()],
        Workload::BadInput => vec![NET_TEST.to_owned()],
        Workload::BlkHostile => vec![HOSTILE_TEST.to_owned(), NET_TEST.to_owned()],
        _ => vec![row.test()],
    }
}

pub(super) fn ours(disk: bool, vif: bool) -> Option<OurDevices> {
    Some(OurDevices {
        disk,
        vifs: if vif {
            vec![format!("0:{GUEST_MAC}")]
        } else {
            Vec::new()
        },
        ..Default::default()
    })
}

/// The domU of a Xen row; `nonce` is a per-run value the checks look for.
pub fn spec(row: &Row, nonce: &str, profile: Profile) -> DomainSpec {
    let name = domain_name(row);
    let tests = guest_tests(row);
    let mut words = vec![format!("tests={}", tests.join(","))];
    let ours_backend = row.backend == Backend::PvkitXen;
    let mut s = DomainSpec::new(&name, String::new());
    match row.workload {
        Workload::LinuxPeer => {
            s.kernel = Kernel::Linux;
            s.memory_mib = LINUX_MEMORY_MIB;
            s.timeout = Duration::from_secs(180);
            s.host_disk = Some(HostDisk {
                sectors: SELFCHECK_DISK_SECTORS,
                fill_seed: 0x5e1f,
            });
            if ours_backend {
                s.ours = Some(OurDevices {
                    disk: true,
                    vifs: vec![format!("0:{LINUX_DOMU_MAC}")],
                    hotplug: true,
                    console: Some(OurConsole {
                        devid: 1,
                        mode: ConsoleMode::Log {
                            log: format!("/tmp/hvc1-{name}.log"),
                            input: hvc1_input(nonce),
                            expect: format!("PVKIT-SELFCHECK hvc1 nonce={nonce}"),
                        },
                    }),
                    ..Default::default()
                });
            } else {
                s.vifs = vec![format!("mac={LINUX_DOMU_MAC}, script={VIF_SCRIPT_PATH}")];
            }
            s.running.push(call(
                "console_input",
                &["PVKIT-SELFCHECK console-ready", &console_input(nonce)],
            ));
            s.cmdline = format!(
                "console=hvc0 quiet pvkit.nonce={nonce} pvkit.ip={DOMU_IP} pvkit.peer={DOM0_IP} \
                 pvkit.pings={SELFCHECK_PINGS} pvkit.hvc1={}",
                u8::from(ours_backend)
            );
            return s;
        }
        Workload::Hello => words.push(format!("hello.mem_mib={GUEST_MEMORY_MIB}")),
        Workload::Cpuid => words.push("cpuid.expect=xen".to_owned()),
        Workload::Timer => words.push(format!("timer.hz={TIMER_HZ} timer.ms={TIMER_MS}")),
        Workload::Xenstore => {
            // Once the guest has set its watch it writes data/pvkit-ready; dom0 then writes the
            // watched key (in the background: the hook must not stall dom0's wait loop).
            s.running.push(call("xenstore_ping", &[&xenstore_value(nonce)]));
            words.push("xenstore.peer=1".to_owned());
        }
        Workload::BlkIntegrity => {
            s.host_disk = Some(HostDisk {
                sectors: BLK_SECTORS,
                fill_seed: BLK_FILL,
            });
            s.ours = if ours_backend { ours(true, false) } else { None };
            words.push(format!("{BLK_TEST}.seed={}", blk_seed(nonce)));
            words.push(format!("{BLK_TEST}.extents={BLK_EXTENTS}"));
        }
        Workload::BlkThroughput => {
            s.host_disk = Some(HostDisk {
                sectors: THROUGHPUT_SECTORS,
                fill_seed: 0x6265_6e63,
            });
            s.ours = if ours_backend { ours(true, false) } else { None };
            s.timeout = throughput_timeout(profile);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::NetEcho => {
            if ours_backend {
                s.ours = ours(false, true);
            } else {
                s.vifs = vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")];
                s.running.push(call("echo_start", &[ECHO_PATH]));
                s.post.push("echo_stop".to_owned());
            }
            s.timeout = throughput_timeout(profile);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::ConsoleEcho => {
            let mut o = ours(false, false).expect("some");
            o.console = Some(OurConsole {
                devid: 1,
                mode: ConsoleMode::Echo,
            });
            s.ours = Some(o);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::ConsoleInput => {
            s.running
                .push(call("console_input", &[CONSOLE_READY, &console_input(nonce)]));
            words.push(format!("{CONSOLE_TEST}.expect={}", console_input(nonce)));
        }
        Workload::NetPing => {
            match (ours_backend, row.variant) {
                (false, _) => s.vifs = vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")],
                (true, Some(Variant::Tap)) => {
                    s.ours = Some(OurDevices {
                        vifs: vec![format!("0:{GUEST_MAC}")],
                        tap: true,
                        after_ready: vec![call("tap_up", &[TAP_NAME, &format!("{DOM0_IP}/24")])],
                        ..Default::default()
                    });
                }
                (true, _) => s.ours = ours(false, true),
            }
            if !ours_backend || row.variant == Some(Variant::Tap) {
                // dom0's own kernel answers: it counts the requests.
                s.pre.push("icmp_mark".to_owned());
                s.post.push("icmp_report".to_owned());
            }
            words.extend(net_ping_words());
        }
        Workload::NoBackend => {
            s.paused = true;
            s.running
                .push(call("stub_vbd", &[STUB_BACKEND, &XVDA.to_string()]));
            words.push(format!("{BLK_TEST}.timeout_ms=3000"));
        }
        Workload::BadInput => {
            s.pre.push(call(
                "missing_image_check",
                &[BACKEND_PATH, &XVDA.to_string(), MISSING_IMAGE, HOSTILE_IMAGE],
            ));
            let mut o = ours(false, true).expect("some");
            o.after_ready = vec![call(
                "hostile_vbd",
                &[&HOSTILE_VBD.to_string(), &HOSTILE_RING_REF.to_string()],
            )];
            o.extra_args = vec!["--vbd".to_owned(), format!("{HOSTILE_VBD}:{HOSTILE_IMAGE}")];
            s.ours = Some(o);
            words.extend(net_ping_words());
        }
        Workload::BlkHostile => {
            s.ours = ours(true, true);
            s.host_disk = Some(HostDisk {
                sectors: BLK_SECTORS,
                fill_seed: BLK_FILL,
            });
            words.extend(net_ping_words());
        }
        Workload::Heap
        | Workload::Evtchn
        | Workload::FaultPagefault
        | Workload::FaultPanic
        | Workload::DeviceAbsent => {}
        w => unreachable!("no Xen PV row runs {}", w.name()),
    }
    s.cmdline = words.join(" ");
    s
}

/// A throughput domU's timeout: its phases plus room for the boot.
pub(super) fn throughput_timeout(profile: Profile) -> Duration {
    match profile {
        Profile::Test => Duration::from_secs(60),
        Profile::Compare { phase_ms } => Duration::from_secs(60) + Duration::from_millis(phase_ms * 12),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Env, MATRIX};
    use std::path::PathBuf;

    use crate::matrix::named as row;

    fn xen_rows() -> Vec<Row> {
        MATRIX.iter().filter(|r| r.env == Env::XenPv).copied().collect()
    }

    #[test]
    fn every_xen_row_has_a_spec_with_a_unique_domain_name() {
        let mut names: Vec<String> = xen_rows()
            .iter()
            .map(|r| spec(r, "n", Profile::Test).name)
            .collect();
        for n in &names {
            assert!(
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
        }
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(before, names.len(), "{names:?}");
        assert_eq!(domain_name(&row("xen-pv/xenstore")), "xenstore");
        assert_eq!(
            domain_name(&row("xen-pv/pvkit-xen/net-ping@xen-net+tap")),
            "pvkit-xen-net-ping-tap"
        );
    }

    #[test]
    fn xl_config_quotes_and_lists() {
        let mut s = spec(&row("xen-pv/hello"), "n", Profile::Test);
        s.cmdline = "tests=hello x=\"q\"".into();
        let slot = DiskSlot {
            image: PathBuf::from("/i.img"),
            dom0_dev: "/dev/vda".into(),
            loop_dev: "/dev/loop3".into(),
        };
        let c = s.xl_config(Some(&slot));
        assert!(c.contains("name = \"hello\"\n"), "{c}");
        assert!(c.contains("type = \"pv\"\n"));
        assert!(c.contains(&format!("kernel = \"{GUEST_PATH}\"\n")));
        assert!(c.contains("extra = \"tests=hello x=\\\"q\\\"\"\n"));
        assert!(
            c.contains("disk = [ \"format=raw, vdev=xvda, access=rw, target=/dev/loop3\" ]\n"),
            "{c}"
        );
        assert!(c.contains("vif = [  ]\n"));
        assert!(!c.contains("ramdisk"));
        let l = spec(&row("xen-pv/linux/linux-peer"), "abc", Profile::Test).xl_config(None);
        assert!(l.contains(&format!("ramdisk = \"{LINUX_INITRD_PATH}\"")));
        assert!(l.contains("pvkit.nonce=abc"));
        // Our daemon serves the disk: no xl disk line.
        let ours = spec(&row("xen-pv/pvkit-xen/blk-integrity@xen-blk"), "n", Profile::Test);
        assert!(ours.xl_config(Some(&slot)).contains("disk = [  ]"));
    }

    #[test]
    fn hooks_call_the_library_with_quoted_arguments() {
        let slot = DiskSlot {
            image: PathBuf::from("/i.img"),
            dom0_dev: "/dev/vdb".into(),
            loop_dev: "/dev/loop1".into(),
        };
        let s = spec(&row("xen-pv/pvkit-xen/bad-input@xen-blk"), "n", Profile::Test);
        let [pre, running, post] = s.hooks(Some(&slot));
        assert_eq!(pre[0], "disk_attach /dev/loop1 /dev/vdb");
        assert!(
            pre[1].starts_with("missing_image_check /pvkit/pvkit-xen-backend 51712 "),
            "{pre:?}"
        );
        assert!(
            running[0].starts_with("if backend_start /pvkit/pvkit-xen-backend --vif "),
            "{running:?}"
        );
        assert!(running[0].contains("--vbd 51728:/tmp/hostile.img"), "{running:?}");
        assert_eq!(running[1], "    hostile_vbd 51728 1234567");
        assert_eq!(running[2], "fi");
        assert_eq!(
            post,
            vec![
                "backend_stop".to_owned(),
                "disk_detach /dev/loop1 /dev/vdb".to_owned()
            ]
        );
        // Every function a hook calls exists in the library.
        for r in xen_rows() {
            let s = spec(&r, "n", Profile::Test);
            for line in s.hooks(Some(&slot)).iter().flatten() {
                let word = line
                    .trim()
                    .trim_start_matches("if ")
                    .split_whitespace()
                    .next()
                    .unwrap();
                if word == "fi" {
                    continue;
                }
                assert!(
                    DOM0_LIB.contains(&format!("\n{word}() {{")),
                    "{r}: {word} is not in dom0-lib.sh"
                );
            }
        }
        let linux = spec(&row("xen-pv/pvkit-xen/linux-peer"), "n9", Profile::Test);
        let [_, running, post] = linux.hooks(Some(&slot));
        assert!(
            running[0].contains(
                "--console 1:/tmp/hvc1-pvkit-xen-linux-peer.log --console-input pvkit-hvc1-input-n9"
            ),
            "{running:?}"
        );
        assert!(
            post.iter()
                .any(|p| p == "console_log_notes 1 /tmp/hvc1-pvkit-xen-linux-peer.log"),
            "{post:?}"
        );
        assert!(linux.cmdline.contains("pvkit.hvc1=1"));
        assert!(
            spec(&row("xen-pv/linux/linux-peer"), "n9", Profile::Test)
                .cmdline
                .contains("pvkit.hvc1=0")
        );
        assert!(
            VIF_SCRIPT.contains(&format!("{DOM0_IP}/24")),
            "the vif script's address is DOM0_IP"
        );
    }
}
