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
    let watch = build_helper(&cache, "fsbase.rs", "pvkit-fsbase-watch")?;
    img.host_program(&tree, &watch, scenario::FSBASE_WATCH_PATH)?;
    if bundle.specs.iter().any(|s| s.ours.is_some()) {
        let backend = build_backend(&cache)?;
        if std::env::var_os(MALLOC_CHECK_ENV).is_some_and(|v| !v.is_empty()) {
            // glibc's checking allocator under the daemon: a write past the end of a heap block
            // aborts at the block's next free or realloc, with the daemon's crash report naming
            // who freed it.
            let real = format!("{}.bin", scenario::BACKEND_PATH);
            img.host_program(&tree, &backend, &real)?;
            img.library(&tree, "libc_malloc_debug.so.0")?;
            let wrapper = format!(
                "#!/bin/sh\nMALLOC_CHECK_=3 LD_PRELOAD=libc_malloc_debug.so.0 exec {real} \"$@\"\n"
            );
            img.add(scenario::BACKEND_PATH, 0o755, dom0::Payload::Bytes(wrapper.into_bytes()));
        } else {
            img.host_program(&tree, &backend, scenario::BACKEND_PATH)?;
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

/// Set (to anything but empty) to run the Xen rows' `pvkit-xen-backend` under glibc's checking
/// allocator (`libc_malloc_debug.so.0` preloaded, `MALLOC_CHECK_=3`): unlike AddressSanitizer it
/// keeps the daemon's own allocator, its timing, and its reuse of freed memory.
pub const MALLOC_CHECK_ENV: &str = "PVKIT_XEN_BACKEND_MALLOC_CHECK";

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
        Some(sanitizer) => workspace::target_dir()
            .join(format!("sanitizer-{sanitizer}"))
            .join(SANITIZER_HOST)
            .join("release/pvkit-xen-backend"),
        None => workspace::target_dir().join("release/pvkit-xen-backend"),
    }
}

/// Builds `pvkit-xen-backend` (release) and copies it without debug info into the cache (the
/// dom0 image holds it in RAM).
fn build_backend(cache: &Path) -> Result<PathBuf> {
    let mut cmd = workspace::cargo();
    let built = backend_build_path();
    match sanitizer() {
        Some(sanitizer) => {
            let dir = workspace::target_dir().join(format!("sanitizer-{sanitizer}"));
            // An explicit target keeps build scripts and proc macros uninstrumented.
            cmd.args(["+nightly", "build", "-p", "pvkit-backends", "--release"])
                .args(["--bin", "pvkit-xen-backend", "--target", SANITIZER_HOST, "--target-dir"])
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

/// What dom0's FS base watcher found wrong with the platform during the boot, if anything: user
/// threads that ran with a FS base not their own (their thread-local data, malloc's among it,
/// read and written at another thread's or process's place), or no report from the watcher.
pub fn platform_fault(r: &HarnessReport) -> Option<String> {
    match r.fsbase {
        Some((_, 0)) => None,
        Some((checks, lost)) => Some(format!(
            "dom0's threads ran with a FS base not their own {lost} times in {checks} checks during \
             this boot ({}): a fault below the toolstack (Xen, dom0's kernel or QEMU's CPU emulation), \
             which corrupts any program's thread-local data (see xtask/README.md)",
            r.fsbase_events.first().map(String::as_str).unwrap_or("no event line")
        )),
        None if r.finished => Some(format!(
            "dom0's FS base watcher gave no total ({})",
            if r.fsbase_events.is_empty() {
                "no line at all".to_owned()
            } else {
                r.fsbase_events.join("; ")
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
                    let problems = checks::check(row, r, &nonce, bundle.slot(&spec.name));
                    let crash = match checks::guest_end(r) {
                        crate::checks::GuestEnd::Crash(why) => Some(why),
                        _ => None,
                    };
                    cell.verdict = Verdict::from_problems(crash, &problems);
                    if cell.verdict != Verdict::Pass
                        && let Some(p) = &platform
                    {
                        cell.notes.push(format!("platform: {p}"));
                    }
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
    fn platform_fault_comes_from_the_fsbase_watcher() {
        use super::{HarnessReport, platform_fault};
        let clean = HarnessReport::parse("PVKIT-XEN PLATFORM fsbase checks=9000 lost=0\nPVKIT-XEN HARNESS END\n");
        assert_eq!(platform_fault(&clean), None);
        let lost = HarnessReport::parse(
            "PVKIT-XEN PLATFORM fsbase-lost thread=1 want=0x7f00 got=0x4c10\n\
             PVKIT-XEN PLATFORM fsbase checks=9000 lost=2\nPVKIT-XEN HARNESS END\n",
        );
        let p = platform_fault(&lost).unwrap();
        assert!(p.contains("2 times in 9000 checks") && p.contains("got=0x4c10"), "{p}");
        let silent = HarnessReport::parse("PVKIT-XEN HARNESS END\n");
        assert!(platform_fault(&silent).unwrap().contains("no total"));
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
