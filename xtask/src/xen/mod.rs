//! The Xen harness: real Xen 4.17 with a Linux dom0, booted in QEMU (TCG), running domU scenarios.
//!
//! - `packages`: the Debian packages, fetched with `apt-get download`, unpacked, cached by version;
//! - `elf`, `cpio`: `DT_NEEDED` / `.modinfo` reading and the newc writer the images need;
//! - `dom0`: dom0's initramfs (busybox, bash, toolstack, libraries, modules, `xtask/xen/init.sh`);
//! - `domain`: a domU and dom0's part around it (xl config, hook calls, our daemon's arguments);
//! - `scenario`: the domU of each Xen PV row of the matrix; `checks`: what its report must show;
//! - `boot`: the Xen machine on the one QEMU runner; `report`: the serial log split per domain.
//!
//! One Xen boot runs every requested scenario in turn (dom0's init creates each domU with `xl`,
//! waits for it, forwards its console and dom0's checks over the serial line, then powers off).

pub mod boot;
pub mod checks;
pub mod cpio;
pub mod dom0;
pub mod domain;
pub mod elf;
pub mod packages;
pub mod report;
pub mod scenario;

/// dom0's Ethernet echo peer: built into its own binary for dom0, included here for its tests.
#[cfg(test)]
#[path = "../../xen/echo.rs"]
mod echo_peer;
/// dom0's platform watcher: built into its own binary for dom0, included here for its test.
#[cfg(test)]
#[path = "../../xen/platform.rs"]
#[allow(dead_code)]
mod platform_watch;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::dom0::Payload;
use self::report::HarnessReport;
use self::scenario::{Bundle, DomainSpec};
use crate::disk::DiskImage;
use crate::matrix::Row;
use crate::outcome::{CellResult, Verdict};
use crate::{provision, table, workspace};

/// Where the harness keeps its packages, trees and images.
pub fn cache_dir() -> PathBuf {
    workspace::xtask_dir().join("xen")
}

/// Host-side durations of one harness run.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// apt resolution, download and unpacking (near zero when cached).
    pub packages: Duration,
    /// Building the initramfs images.
    pub images: Duration,
    pub boot: boot::Milestones,
}

/// One finished harness boot.
pub struct Harness {
    pub report: HarnessReport,
    pub boot: boot::Boot,
    pub timings: Timings,
}

/// Fetches and builds what is needed, boots Xen with `bundle`'s scenarios and parses the result.
pub fn run_harness(
    bundle: &Bundle,
    log: &Path,
    timeout: Option<Duration>,
    on_line: impl FnMut(&str),
) -> Result<Harness> {
    let mut timings = Timings::default();
    provision::ensure_qemu()?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let t0 = Instant::now();
    let (tree, kver) = packages::ensure_tree(&cache)?;
    timings.packages = t0.elapsed();

    let t0 = Instant::now();
    let xen = tree.join("boot/xen-4.17-amd64");
    if !xen.is_file() {
        let gz = tree.join("boot/xen-4.17-amd64.gz");
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .with_context(|| format!("gzip -dc {}", gz.display()))?;
        if !out.status.success() {
            bail!("gzip -dc {} failed: {}", gz.display(), out.status);
        }
        std::fs::write(&xen, out.stdout)?;
    }
    let vmlinuz = tree.join(format!("boot/vmlinuz-{kver}"));
    let mut img = dom0::base(&tree, &kver)?;
    if bundle.specs.iter().any(|s| !s.vifs.is_empty()) {
        let echo = build_helper(&cache, "echo.rs", "pvkit-echo")?;
        img.host_program(&tree, &echo, scenario::ECHO_PATH)?;
    }
    let watch = build_helper(&cache, "platform.rs", "pvkit-platform-watch")?;
    img.host_program(&tree, &watch, scenario::PLATFORM_WATCH_PATH)?;
    if bundle.specs.iter().any(|s| s.ours.is_some()) {
        let backend = build_backend(&cache)?;
        match backend_env() {
            Some(env) => {
                // The daemon under extra settings (glibc's checking allocator, its arena count,
                // ...): a wrapper sets them and runs the real program; preloaded libraries come
                // from the tree.
                let real = format!("{}.bin", scenario::BACKEND_PATH);
                img.host_program(&tree, &backend, &real)?;
                for lib in env
                    .split_whitespace()
                    .filter_map(|kv| kv.strip_prefix("LD_PRELOAD="))
                    .flat_map(|l| l.split(':'))
                {
                    img.library(&tree, lib)?;
                }
                let wrapper = format!("#!/bin/sh\nexport {env}\nexec {real} \"$@\"\n");
                img.add(
                    scenario::BACKEND_PATH,
                    0o755,
                    dom0::Payload::Bytes(wrapper.into_bytes()),
                );
            }
            None => img.host_program(&tree, &backend, scenario::BACKEND_PATH)?,
        }
    }
    add_bundle(&mut img, bundle, &tree, &vmlinuz)?;
    let initramfs = cache.join("dom0-initramfs.cpio");
    img.write(&initramfs)?;
    timings.images = t0.elapsed();

    let timeout = timeout.unwrap_or_else(|| {
        Duration::from_secs(120) + bundle.specs.iter().map(|s| s.timeout).sum::<Duration>()
    });
    let machine = boot::Machine {
        xen,
        dom0_kernel: vmlinuz,
        dom0_initramfs: initramfs,
        drives: bundle.slots.iter().flatten().map(|s| s.image.clone()).collect(),
        timeout,
    };
    eprintln!("$ {}", workspace::display_command(&machine.config().command()?));
    let b = boot::boot(&machine, log, on_line)?;
    timings.boot = b.milestones.clone();
    Ok(Harness {
        report: HarnessReport::parse(&b.serial),
        boot: b,
        timings,
    })
}

/// The domains' files, the hook library, the guest and the Linux domU into dom0's image.
fn add_bundle(img: &mut dom0::Image, bundle: &Bundle, tree: &Path, vmlinuz: &Path) -> Result<()> {
    let mut list = String::new();
    let text = |t: &str| Payload::Bytes(t.as_bytes().to_vec());
    img.add(scenario::DOM0_LIB_PATH, 0o644, text(scenario::DOM0_LIB));
    for (s, slot) in bundle.specs.iter().zip(&bundle.slots) {
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!(
                "domain name {:?} must be non-empty ASCII letters, digits and '-'",
                s.name
            );
        }
        list.push_str(&s.name);
        list.push('\n');
        let dir = format!("pvkit/s/{}", s.name);
        img.add(
            &format!("{dir}/domain.cfg"),
            0o644,
            text(&s.xl_config(slot.as_ref())),
        );
        if s.created_paused() {
            img.add(&format!("{dir}/paused"), 0o644, text(""));
        }
        img.add(
            &format!("{dir}/timeout"),
            0o644,
            text(&format!("{}\n", s.timeout.as_secs().max(1))),
        );
        if let (Some(slot), Some(disk)) = (slot, s.host_disk) {
            DiskImage::create(&slot.image, disk.sectors, disk.fill_seed)?;
        }
        let [pre, running, post] = s.hooks(slot.as_ref());
        for (file, calls) in [("pre", pre), ("running", running), ("post", post)] {
            if !calls.is_empty() {
                let mut body = calls.join("\n");
                body.push('\n');
                img.add(&format!("{dir}/{file}"), 0o644, text(&body));
            }
        }
    }
    img.add("pvkit/scenarios", 0o644, Payload::Bytes(list.into_bytes()));
    if bundle.specs.iter().any(|s| !s.vifs.is_empty()) {
        img.add(scenario::VIF_SCRIPT_PATH, 0o755, text(scenario::VIF_SCRIPT));
    }
    if let Some(guest) = &bundle.guest {
        if !guest.is_file() {
            bail!("guest ELF {} does not exist", guest.display());
        }
        img.add(scenario::GUEST_PATH, 0o644, Payload::File(guest.clone()));
    }
    if bundle.linux {
        img.add(
            scenario::LINUX_KERNEL_PATH,
            0o644,
            Payload::File(vmlinuz.to_owned()),
        );
        let mut domu = dom0::Image::default();
        domu.busybox(tree)?;
        domu.add("init", 0o755, text(scenario::LINUX_DOMU_INIT));
        let kver = tree_kernel_version(vmlinuz)?;
        for m in dom0::module_paths(tree, &kver, scenario::LINUX_DOMU_MODULES)? {
            let name = m.rsplit('/').next().expect("a path has a last part");
            domu.add(&format!("modules/{name}"), 0o644, Payload::File(tree.join(&m)));
        }
        let path = cache_dir().join("linux-domu-initramfs.cpio");
        domu.write(&path)?;
        img.add(scenario::LINUX_INITRD_PATH, 0o644, Payload::File(path));
    }
    Ok(())
}

/// Compiles a dom0 helper written with std only (`xtask/xen/<file>.rs`) with the host's `rustc`
/// into the cache as `name`, unless the binary is newer than its source.
fn build_helper(cache: &Path, file: &str, name: &str) -> Result<PathBuf> {
    let src = workspace::root().join("xtask/xen").join(file);
    let out = cache.join(name);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&out).is_some() && modified(&out) >= modified(&src) {
        return Ok(out);
    }
    let mut cmd = Command::new("rustc");
    cmd.args(["--edition", "2024", "-O", "-C", "debuginfo=0", "--crate-name"])
        .arg(name.replace('-', "_"))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .current_dir(workspace::root());
    let o = cmd
        .output()
        .with_context(|| format!("running {}", workspace::display_command(&cmd)))?;
    if !o.status.success() {
        bail!(
            "building dom0's {name} failed: {}\n{}",
            workspace::display_command(&cmd),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// Set to `address` to run the Xen rows' `pvkit-xen-backend` under AddressSanitizer (nightly,
/// `-Zsanitizer=address`, the runtime linked in): a heap overflow or use after free in the daemon
/// then aborts with ASan's report in the daemon's log, which the report shows as `backend:` notes.
pub const SANITIZER_ENV: &str = "PVKIT_XEN_BACKEND_SANITIZER";

/// Extra environment of the Xen rows' `pvkit-xen-backend` in dom0, as `VAR=value` words, e.g.
/// `MALLOC_CHECK_=3 LD_PRELOAD=libc_malloc_debug.so.0` (glibc's checking allocator, which unlike
/// AddressSanitizer keeps the daemon's own allocator, timing and reuse of freed memory) or
/// `MALLOC_ARENA_MAX=1`. Libraries named in `LD_PRELOAD` are copied from Debian's packages.
pub const BACKEND_ENV: &str = "PVKIT_XEN_BACKEND_ENV";

fn backend_env() -> Option<String> {
    std::env::var(BACKEND_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The sanitizer asked for in [`SANITIZER_ENV`], if any.
fn sanitizer() -> Option<String> {
    std::env::var(SANITIZER_ENV).ok().filter(|v| !v.is_empty())
}

/// The target a sanitizer build names (so that build scripts stay uninstrumented).
const SANITIZER_HOST: &str = "x86_64-unknown-linux-gnu";

/// Where cargo leaves `pvkit-xen-backend` with its debug info: the copy dom0 runs is this one
/// stripped, so this one resolves the offsets of the daemon's crash report.
pub fn backend_build_path() -> PathBuf {
    match sanitizer() {
        Some(sanitizer) => sanitizer_dir(&sanitizer)
            .join(SANITIZER_HOST)
            .join("release/pvkit-xen-backend"),
        None => workspace::target_dir().join("release/pvkit-xen-backend"),
    }
}

/// The target directory of a sanitizer build.
fn sanitizer_dir(sanitizer: &str) -> PathBuf {
    workspace::target_dir().join(format!("sanitizer-{sanitizer}"))
}

/// Builds `pvkit-xen-backend` (release) and copies it without debug info into the cache (the
/// dom0 image holds it in RAM).
fn build_backend(cache: &Path) -> Result<PathBuf> {
    let mut cmd = workspace::cargo();
    let built = backend_build_path();
    match sanitizer() {
        Some(sanitizer) => {
            let dir = sanitizer_dir(&sanitizer);
            // An explicit target keeps build scripts and proc macros uninstrumented.
            cmd.args(["+nightly", "build", "-p", "pvkit-backends", "--release"])
                .args([
                    "--bin",
                    "pvkit-xen-backend",
                    "--target",
                    SANITIZER_HOST,
                    "--target-dir",
                ])
                .arg(&dir)
                .env("RUSTFLAGS", format!("-Zsanitizer={sanitizer}"));
        }
        None => {
            cmd.args([
                "build",
                "-p",
                "pvkit-backends",
                "--release",
                "--bin",
                "pvkit-xen-backend",
            ]);
        }
    }
    workspace::run_visible(&mut cmd)?;
    let out = cache.join("pvkit-xen-backend");
    match Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&out)
        .status()
    {
        Ok(st) if st.success() => Ok(out),
        // No binutils: ship it with its debug info (bigger, same program).
        Ok(_) | Err(_) => Ok(built),
    }
}

/// `6.1.0-N-amd64` from `.../vmlinuz-6.1.0-N-amd64`.
fn tree_kernel_version(vmlinuz: &Path) -> Result<String> {
    vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .with_context(|| format!("no kernel version in {}", vmlinuz.display()))
}

/// A per-run value the Linux self-check must echo (so an old log cannot pass).
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", t.as_secs(), std::process::id())
}

/// Why the boot as a whole went wrong, if it did.
pub fn boot_problem(h: &Harness) -> Option<String> {
    let mut p = Vec::new();
    p.extend(h.report.fatal.iter().map(|f| format!("dom0 init: {f}")));
    match &h.boot.exit_code {
        Some(0) => {}
        Some(c) => p.push(format!("QEMU exited with status {c} (dom0's poweroff gives 0)")),
        None => p.push(format!("QEMU did not power off: {}", h.boot.outcome)),
    }
    if h.report.dom0_ready.is_none() {
        p.push("dom0 never reported its toolstack ready".to_owned());
    } else if !h.report.finished {
        p.push("dom0 did not finish the domain list".to_owned());
    }
    (!p.is_empty()).then(|| p.join("; "))
}

/// What dom0's platform watcher found wrong during the boot, if anything: user threads that ran
/// with a FS base not their own (their thread-local data, malloc's among it, read and written at
/// another thread's or process's place), fresh pages that read back other bytes than written, or
/// no report from the watcher.
pub fn platform_fault(r: &HarnessReport) -> Option<String> {
    match r.platform {
        Some(t) if t.fsbase_lost == 0 && t.fresh_bad == 0 && t.vector_bad == 0 => None,
        Some(t) => Some(format!(
            "during this boot dom0's threads ran with a FS base not their own {} times in {} \
             checks, fresh pages read back wrong {} times in {} rounds, and vector registers \
             changed across a sleep {} times in {} ({}): a fault below the toolstack (Xen, dom0's \
             kernel or QEMU's CPU emulation) that corrupts any program (see xtask/README.md)",
            t.fsbase_lost,
            t.fsbase_checks,
            t.fresh_bad,
            t.fresh_rounds,
            t.vector_bad,
            t.vector_checks,
            r.platform_events
                .first()
                .map(String::as_str)
                .unwrap_or("no event line")
        )),
        None if r.finished => Some(format!(
            "dom0's platform watcher gave no total ({})",
            if r.platform_events.is_empty() {
                "no line at all".to_owned()
            } else {
                r.platform_events.join("; ")
            }
        )),
        None => None,
    }
}

/// Prints the measured times of a run.
pub fn print_timings(h: &Harness) {
    let t = &h.timings;
    let d = |x: Option<Duration>| x.map(table::duration).unwrap_or_else(|| "-".to_owned());
    eprintln!(
        "    xen harness: packages {}, images {}, Xen banner {}, dom0 ready {} (dom0 uptime {}), QEMU exit {}",
        table::duration(t.packages),
        table::duration(t.images),
        d(t.boot.xen_banner),
        d(t.boot.dom0_ready),
        h.report
            .dom0_ready
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "-".to_owned()),
        d(t.boot.exited),
    );
}

/// Shows a serial line: progress of the domains always, their consoles when `verbose`.
fn show_line(line: &str, verbose: bool) {
    if let Some(at) = line.find("PVKIT-XEN ") {
        let rest = &line[at + "PVKIT-XEN ".len()..];
        if let Some(c) = rest.strip_prefix("CONSOLE ") {
            if verbose {
                eprintln!("      {c}");
            }
        } else if rest.contains(" BEGIN")
            || rest.contains(" END ")
            || rest.starts_with("DOM0")
            || rest.starts_with("FATAL")
            || rest.starts_with("PLATFORM")
        {
            eprintln!("    [xen] {rest}");
        }
    } else if verbose {
        eprintln!("      | {line}");
    }
}

/// Runs the Xen PV rows of the matrix in one Xen boot; one result per row, in order. A boot that
/// goes wrong crashes every row with the reason.
pub fn run_rows(rows: &[&Row], ctx: &crate::qemu_env::Ctx) -> Vec<CellResult> {
    let nonce = nonce();
    let specs: Vec<DomainSpec> = rows
        .iter()
        .map(|r| scenario::spec(r, &nonce, ctx.profile))
        .collect();
    let log = workspace::log_dir().join(format!("{}-xen.log", ctx.tag));
    let needs_guest = specs.iter().any(|s| s.kernel == scenario::Kernel::Pvkit);
    let bundle = Bundle::new(
        specs,
        needs_guest.then(|| ctx.elf.clone()),
        &cache_dir().join("disks"),
    );
    eprintln!(
        "==> xen-pv: {} domains in one Xen boot (serial log {})",
        rows.len(),
        log.display()
    );
    let verbose = ctx.verbose;
    let h = match run_harness(&bundle, &log, None, |l| show_line(l, verbose)) {
        Ok(h) => h,
        Err(e) => {
            return rows
                .iter()
                .map(|r| {
                    let mut c = CellResult::new(r, Verdict::Crash(format!("the Xen boot failed: {e:#}")));
                    c.log = Some(log.clone());
                    c
                })
                .collect();
        }
    };
    print_timings(&h);
    let platform = platform_fault(&h.report);
    if let Some(p) = &platform {
        eprintln!("    xen platform: {p}");
    }
    let boot = boot_problem(&h);
    rows.iter()
        .zip(&bundle.specs)
        .map(|(row, spec)| {
            let mut cell = CellResult::new(row, Verdict::Pass);
            cell.log = Some(log.clone());
            match h.report.scenario(&spec.name) {
                None => {
                    cell.verdict = Verdict::Crash(format!(
                        "no report from dom0 for domain {}{}",
                        spec.name,
                        boot.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
                    ));
                }
                Some(r) => {
                    cell.time = r.run;
                    cell.costs = r
                        .transcript
                        .perfs()
                        .map(crate::costs::Measure::from_perf)
                        .collect();
                    let mut problems = checks::check(row, r, &nonce, bundle.slot(&spec.name));
                    let crash = match checks::guest_end(r) {
                        crate::checks::GuestEnd::Crash(why) => Some(why),
                        _ => None,
                    };
                    // A platform that corrupts programs makes every result of the boot
                    // meaningless, a pass included.
                    problems.extend(platform.iter().map(|p| format!("platform: {p}")));
                    cell.verdict = Verdict::from_problems(crash, &problems);
                    cell.notes.extend(
                        r.notes
                            .iter()
                            .filter(|n| !n.starts_with("backend:"))
                            .take(20)
                            .cloned(),
                    );
                }
            }
            cell
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::echo_peer::{ETHERTYPE, echo_frame};

    /// The FS base watcher's lines: a clean total is no fault, a lost one names the first event,
    /// and a finished boot without a total is reported too.
    #[test]
    fn platform_fault_comes_from_the_platform_watcher() {
        use super::{HarnessReport, platform_fault};
        let clean = HarnessReport::parse(
            "PVKIT-XEN PLATFORM totals fsbase_checks=9000 fsbase_lost=0 fresh_rounds=10 fresh_bad=0 vector_checks=50 vector_bad=0\nPVKIT-XEN HARNESS END\n",
        );
        assert_eq!(platform_fault(&clean), None);
        let lost = HarnessReport::parse(
            "PVKIT-XEN PLATFORM vector-lost sse round=7 lane=0 want=0x7f00 got=0x4c10\n\
             PVKIT-XEN PLATFORM totals fsbase_checks=9000 fsbase_lost=0 fresh_rounds=10 fresh_bad=0 \
             vector_checks=50 vector_bad=2\nPVKIT-XEN HARNESS END\n",
        );
        let p = platform_fault(&lost).unwrap();
        assert!(p.contains("2 times in 50") && p.contains("got=0x4c10"), "{p}");
        let silent = HarnessReport::parse("PVKIT-XEN HARNESS END\n");
        assert!(platform_fault(&silent).unwrap().contains("no total"));
    }

    /// The watcher's register check on this host: 20 rounds (SSE and, where there is AVX, AVX)
    /// come back unchanged, so a change in dom0 is the platform's.
    #[test]
    fn platform_watcher_registers_survive_sleeps_here() {
        use super::platform_watch::{VECTOR_BAD, VECTOR_CHECKS, vectors_for};
        use std::sync::atomic::Ordering;
        vectors_for(20);
        assert_eq!(VECTOR_CHECKS.load(Ordering::Relaxed), 20);
        assert_eq!(VECTOR_BAD.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn echo_peer_speaks_the_workloads_ethertype() {
        // echo.rs is built with plain rustc (no crates), so it carries its own copy.
        assert_eq!(ETHERTYPE, pvkit_frontends::workload::net::ETHERTYPE);
    }

    #[test]
    fn echo_peer_swaps_macs_of_workload_frames_only() {
        let guest = [0x00, 0x16, 0x3e, 0, 0, 0x10];
        let peer = pvkit_frontends::workload::net::PEER_MAC;
        let mut frame = Vec::new();
        frame.extend_from_slice(&peer);
        frame.extend_from_slice(&guest);
        frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(b"payload");
        let sent = frame.clone();
        assert!(echo_frame(&mut frame));
        assert_eq!(&frame[..6], &guest);
        assert_eq!(&frame[6..12], &peer);
        assert_eq!(&frame[12..], &sent[12..], "type and payload untouched");
        let mut ipv4 = sent.clone();
        ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let before = ipv4.clone();
        assert!(!echo_frame(&mut ipv4));
        assert_eq!(ipv4, before);
        assert!(!echo_frame(&mut sent[..13].to_vec()), "runt frame");
    }
}
