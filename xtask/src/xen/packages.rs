//! The Debian bookworm packages the Xen harness is built from: fetched with `apt-get download` (no
//! system install), unpacked with `dpkg-deb -x` into one tree, cached under `target/xtask/xen/`
//! and keyed by the exact package file names (which carry the versions).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{process, workspace};

/// The metapackage whose dependency names the current Debian 6.1 kernel (dom0 and the harness's
/// Linux domU).
const KERNEL_META: &str = "linux-image-amd64";

/// Everything else, by name. Libraries beyond the Xen ones are what `xl`, the daemons and bash link
/// against (checked by resolving `DT_NEEDED` when the image is built: a missing one is an error).
pub const PACKAGES: &[&str] = &[
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxenstore4",
    "libxengnttab1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxencall1",
    "libxentoollog1",
    "libxenhypfs1",
    "libxentoolcore1",
    "libxendevicemodel1",
    "libyajl2",
    "busybox-static",
    "bash",
    "libc6",
    "libtinfo6",
    "libgcc-s1",
    "liblzma5",
    "libuuid1",
    "zlib1g",
    "libzstd1",
    // flock(1), which the hotplug scripts' locking.sh needs (busybox has none).
    "util-linux",
];

/// One package file as apt would fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub file: String,
    pub size: u64,
}

impl Deb {
    /// The package name (the file name up to its first `_`).
    pub fn package(&self) -> &str {
        self.file.split('_').next().unwrap_or(&self.file)
    }
}

/// Parses `apt-get download --print-uris` output: `'URI' FILE SIZE HASH` per package.
pub fn parse_print_uris(text: &str) -> Result<Vec<Deb>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('\'')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, file, size, ..] = words[..] else {
            bail!("unexpected `apt-get --print-uris` line: {line:?}");
        };
        if !file.ends_with(".deb") || file.contains('/') {
            bail!("unexpected package file name {file:?} in {line:?}");
        }
        let size = size
            .parse()
            .with_context(|| format!("bad size {size:?} in {line:?}"))?;
        out.push(Deb {
            file: file.to_owned(),
            size,
        });
    }
    Ok(out)
}

/// The kernel package `linux-image-amd64` depends on (`apt-cache depends` output).
pub fn parse_kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-6.1.") && p.ends_with("-amd64"))
        .map(str::to_owned)
}

/// The cache key of a package set: a hash of the sorted file names (FNV-1a, 64 bits), plus a layout
/// version for changes of how the tree is unpacked.
pub fn cache_key(debs: &[Deb]) -> String {
    const LAYOUT: &str = "unpack-v1";
    let mut names: Vec<&str> = debs.iter().map(|d| d.file.as_str()).collect();
    names.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(LAYOUT)
        .chain(names)
        .flat_map(|n| n.bytes().chain([0]))
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = workspace::display_command(cmd);
    let out = cmd.output().with_context(|| format!("could not run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package list with the kernel resolved. Runs `apt-get update` once (as root) if apt knows no
/// candidate for the packages yet.
fn resolve() -> Result<(Vec<String>, Vec<Deb>)> {
    let attempt = || -> Result<(Vec<String>, Vec<Deb>)> {
        let deps = output(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
        let kernel = parse_kernel_dependency(&deps).with_context(|| {
            format!("`apt-cache depends {KERNEL_META}` names no linux-image-6.1.*-amd64 package:\n{deps}")
        })?;
        let mut names: Vec<String> = PACKAGES.iter().map(|s| (*s).to_owned()).collect();
        names.push(kernel);
        let text = output(
            Command::new("apt-get")
                .args(["download", "--print-uris"])
                .args(&names),
        )?;
        let debs = parse_print_uris(&text)?;
        if debs.len() != names.len() {
            bail!(
                "`apt-get download --print-uris` listed {} files for {} packages:\n{text}",
                debs.len(),
                names.len()
            );
        }
        Ok((names, debs))
    };
    match attempt() {
        Ok(r) => Ok(r),
        Err(e) if process::is_root() => {
            eprintln!("xen: apt does not know the packages yet ({e:#}); running apt-get update");
            workspace::run_visible(Command::new("apt-get").arg("update"))?;
            attempt()
        }
        Err(e) => Err(e.context(
            "apt cannot resolve the Xen harness packages; as root run `apt-get update` (Debian 12)",
        )),
    }
}

/// The unpacked tree of all packages, fetched and unpacked if not cached yet. Returns its path and the
/// kernel version directory name (`6.1.0-N-amd64`).
pub fn ensure_tree(cache: &Path) -> Result<(PathBuf, String)> {
    let (names, debs) = resolve()?;
    let key = cache_key(&debs);
    let tree = cache.join(format!("root-{key}"));
    let debs_dir = cache.join("debs");
    let done = tree.join(".pvkit-complete");
    if !done.is_file() {
        std::fs::create_dir_all(&debs_dir)?;
        let missing: Vec<&str> = debs
            .iter()
            .filter(|d| std::fs::metadata(debs_dir.join(&d.file)).map(|m| m.len()).ok() != Some(d.size))
            .map(Deb::package)
            .collect();
        if !missing.is_empty() {
            eprintln!("xen: apt-get download {} package(s)", missing.len());
            let mut cmd = Command::new("apt-get");
            // apt drops to user _apt for downloads, which cannot write into a root-owned target dir.
            cmd.args(["-o", "APT::Sandbox::User=root", "download"])
                .args(&missing)
                .current_dir(&debs_dir);
            output(&mut cmd)?;
        }
        if tree.exists() {
            std::fs::remove_dir_all(&tree)?;
        }
        std::fs::create_dir_all(&tree)?;
        for d in &debs {
            let path = debs_dir.join(&d.file);
            output(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&tree))
                .with_context(|| format!("unpacking {}", path.display()))?;
        }
        std::fs::write(
            &done,
            debs.iter().map(|d| format!("{}\n", d.file)).collect::<String>(),
        )?;
        // Older trees and package files are of no further use.
        for entry in std::fs::read_dir(cache)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("root-") && entry.path() != tree {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        for entry in std::fs::read_dir(&debs_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !debs.iter().any(|d| d.file == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let kernel_pkg = names.last().expect("the kernel is always listed");
    let version = kernel_pkg
        .strip_prefix("linux-image-")
        .expect("resolved kernel package name")
        .to_owned();
    Ok((tree, version))
}

/// The package files of the unpacked tree in `cache` (`xen-hypervisor-4.17-amd64_4.17...deb`,
/// ...), for reports; empty if none is unpacked.
pub fn unpacked_debs(cache: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("root-"))
        .filter_map(|e| std::fs::read_to_string(e.path().join(".pvkit-complete")).ok())
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines() {
        let text = "'http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb9_amd64.deb' \
                    bash_5.2.15-2+b9_amd64.deb 1497828 SHA256:abc\n\
                    'http://x/libc6_2.36-9+deb12u13_amd64.deb' libc6_2.36-9+deb12u13_amd64.deb 2758016 SHA256:def\n";
        assert_eq!(
            parse_print_uris(text).unwrap(),
            vec![
                Deb {
                    file: "bash_5.2.15-2+b9_amd64.deb".into(),
                    size: 1_497_828
                },
                Deb {
                    file: "libc6_2.36-9+deb12u13_amd64.deb".into(),
                    size: 2_758_016
                },
            ]
        );
        assert_eq!(parse_print_uris(text).unwrap()[1].package(), "libc6");
        assert!(parse_print_uris("'http://x/a.deb' ../evil.deb 1 SHA256:0\n").is_err());
        assert!(parse_print_uris("'http://x/a.deb' a.deb many SHA256:0\n").is_err());
        assert!(parse_print_uris("Reading package lists...\n").unwrap().is_empty());
    }

    #[test]
    fn kernel_dependency() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            parse_kernel_dependency("linux-image-amd64\n  Depends: linux-image-6.12.9-amd64\n"),
            None
        );
    }

    #[test]
    fn key_changes_with_any_version_but_not_order() {
        let deb = |f: &str| Deb {
            file: f.into(),
            size: 1,
        };
        let a = [deb("xen_4.17.7_amd64.deb"), deb("bash_5.2_amd64.deb")];
        let b = [deb("bash_5.2_amd64.deb"), deb("xen_4.17.7_amd64.deb")];
        let c = [deb("bash_5.2_amd64.deb"), deb("xen_4.17.8_amd64.deb")];
        assert_eq!(cache_key(&a), cache_key(&b));
        assert_ne!(cache_key(&a), cache_key(&c));
        assert_eq!(cache_key(&a).len(), 16);
    }
}
