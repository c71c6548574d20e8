//! The dom0 initramfs: busybox, bash, the Xen toolstack (`xl`, `xenstored`, `xenconsoled`,
//! `xen-init-dom0`, the xenstore tools and the hotplug scripts), the shared libraries they need, the
//! Xen kernel modules, our init script, and the scenario files and payloads (guest kernels, disk
//! images' recipes) of one harness run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cpio;
use super::elf::{Elf, module_depends};

/// The dom0 init script (see the file for its output protocol).
pub const INIT_SCRIPT: &str = include_str!("../../xen/init.sh");

/// Where Xen's tools live in Debian's packages (and in the image).
pub const XEN_BIN: &str = "usr/lib/xen-4.17/bin";
/// Programs of the toolstack the init script starts, under [`XEN_BIN`].
const XEN_PROGRAMS: &[&str] = &["xl", "xenstored", "xenconsoled", "xen-init-dom0"];
/// Kernel modules, loaded in this order (each after its `depends=`): event channels, grant devices,
/// privcmd (before xenfs), the two kernel backends, loop devices for `phy:` disks, and virtio disks
/// (the host-checked images under the loop devices).
pub const MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-blkback",
    "xen-netback",
    "loop",
    "tun",
    "virtio_pci",
    "virtio_blk",
];
/// Library directories of the unpacked tree, searched in this order; libraries land in the first.
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/xen-4.17/lib",
];
/// The dynamic loader (the `PT_INTERP` of every program) and its real home.
const INTERP: &str = "lib64/ld-linux-x86-64.so.2";
/// Loaded by glibc at run time (pthread cancellation unwinding), so never in `DT_NEEDED`: `xl`
/// aborts without it.
const DLOPENED: &[&str] = &["libgcc_s.so.1"];

/// A file placed into an initramfs.
pub enum Payload {
    /// Copied from the host.
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Reads `rel` inside `tree`, following symbolic links within the tree (an absolute link target is
/// taken relative to the tree, never to the host's root).
pub fn read_in_tree(tree: &Path, rel: &str) -> Result<Vec<u8>> {
    let mut path = PathBuf::from(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let full = tree.join(&path);
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("{} is not in the unpacked packages", full.display()))?;
        if !meta.file_type().is_symlink() {
            return std::fs::read(&full).with_context(|| format!("reading {}", full.display()));
        }
        let target = std::fs::read_link(&full)?;
        let next = if target.is_absolute() {
            target.strip_prefix("/").expect("absolute").to_owned()
        } else {
            path.parent().unwrap_or(Path::new("")).join(target)
        };
        path = normalize(&next)?;
    }
    bail!("too many symbolic links resolving {rel} in {}", tree.display())
}

/// `a/b/../c` -> `a/c`, refusing to leave the tree.
fn normalize(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    bail!("symbolic link {} leaves the package tree", p.display());
                }
            }
            Component::Prefix(_) => bail!("unexpected path prefix in {}", p.display()),
        }
    }
    Ok(out)
}

/// Collects the image's files; directories are created on demand by the cpio writer.
#[derive(Default)]
pub struct Image {
    files: BTreeMap<String, (u32, Payload)>,
    links: BTreeMap<String, String>,
}

impl Image {
    pub fn add(&mut self, dest: &str, perm: u32, payload: Payload) {
        let dest = dest.trim_start_matches('/').to_owned();
        self.links.remove(&dest);
        self.files.insert(dest, (perm, payload));
    }

    pub fn link(&mut self, dest: &str, target: &str) {
        let dest = dest.trim_start_matches('/').to_owned();
        if !self.files.contains_key(&dest) {
            self.links.insert(dest, target.to_owned());
        }
    }

    pub fn contains(&self, dest: &str) -> bool {
        let dest = dest.trim_start_matches('/');
        self.files.contains_key(dest) || self.links.contains_key(dest)
    }

    /// Busybox at `bin/busybox` with a link for each of its applets (existing files win).
    pub fn busybox(&mut self, tree: &Path) -> Result<()> {
        let bb = tree.join("bin/busybox");
        let out = Command::new(&bb)
            .arg("--list-full")
            .output()
            .with_context(|| format!("running {} --list-full", bb.display()))?;
        if !out.status.success() {
            bail!("{} --list-full failed: {}", bb.display(), out.status);
        }
        self.add("bin/busybox", 0o755, Payload::File(bb));
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if !applet.is_empty() && applet != "bin/busybox" {
                self.link(applet, "/bin/busybox");
            }
        }
        Ok(())
    }

    /// A program from the tree plus, transitively, every library it needs.
    pub fn program(&mut self, tree: &Path, rel: &str, dest: &str) -> Result<()> {
        let data = read_in_tree(tree, rel)?;
        self.libraries_of(tree, rel, &data)?;
        self.add(dest, 0o755, Payload::Bytes(data));
        Ok(())
    }

    /// A program built on the host (against the same Debian 12 glibc), with its libraries from
    /// the tree.
    pub fn host_program(&mut self, tree: &Path, path: &Path, dest: &str) -> Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.libraries_of(tree, &path.display().to_string(), &data)?;
        self.add(dest, 0o755, Payload::Bytes(data));
        Ok(())
    }

    fn libraries_of(&mut self, tree: &Path, what: &str, data: &[u8]) -> Result<()> {
        let needed = Elf::parse(data)
            .and_then(|e| e.needed())
            .with_context(|| format!("reading the dynamic section of {what}"))?;
        for soname in needed {
            self.library(tree, &soname)
                .with_context(|| format!("{what} needs {soname}"))?;
        }
        Ok(())
    }

    /// A shared library by soname (and what it needs), placed in `lib/x86_64-linux-gnu`.
    pub fn library(&mut self, tree: &Path, soname: &str) -> Result<()> {
        let dest = format!("{}/{soname}", LIB_DIRS[0]);
        if self.contains(&dest) {
            return Ok(());
        }
        let Some(dir) = LIB_DIRS
            .iter()
            .find(|d| std::fs::symlink_metadata(tree.join(d).join(soname)).is_ok())
        else {
            bail!(
                "{soname} is in none of {LIB_DIRS:?} of the unpacked packages (add its package to \
                 xen::packages::PACKAGES)"
            );
        };
        let data = read_in_tree(tree, &format!("{dir}/{soname}"))?;
        // Reserve the name first: libraries may need each other.
        self.add(&dest, 0o755, Payload::Bytes(Vec::new()));
        self.libraries_of(tree, soname, &data)?;
        self.add(&dest, 0o755, Payload::Bytes(data));
        Ok(())
    }

    /// A directory of the tree, recursively (symbolic links inside resolved).
    pub fn tree_dir(&mut self, tree: &Path, rel: &str) -> Result<()> {
        let full = tree.join(rel);
        for entry in std::fs::read_dir(&full).with_context(|| format!("reading {}", full.display()))? {
            let entry = entry?;
            let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
            let ty = entry.file_type()?;
            if ty.is_dir() {
                self.tree_dir(tree, &name)?;
            } else {
                let perm = std::os::unix::fs::PermissionsExt::mode(&entry.metadata()?.permissions());
                let data = read_in_tree(tree, &name)?;
                self.add(&name, perm & 0o7777 | 0o444, Payload::Bytes(data));
            }
        }
        Ok(())
    }

    /// Writes the image as a newc archive.
    pub fn write(&self, out: &Path) -> Result<()> {
        let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = cpio::Writer::new(BufWriter::new(f));
        for (dest, (perm, payload)) in &self.files {
            let owned;
            let data: &[u8] = match payload {
                Payload::Bytes(b) => b,
                Payload::File(p) => {
                    owned = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    &owned
                }
            };
            w.file(dest, *perm, data)
                .with_context(|| format!("writing {dest} into {}", out.display()))?;
        }
        for (dest, target) in &self.links {
            w.symlink(dest, target)?;
        }
        // The kernel opens it as init's stdin/stdout/stderr before anything is mounted.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.finish()?;
        Ok(())
    }
}

/// The modules of [`MODULES`] and their dependencies, as paths inside the kernel's module tree, in
/// load order (dependencies first).
pub fn module_order(tree: &Path, kver: &str) -> Result<Vec<String>> {
    module_paths(tree, kver, MODULES)
}

/// `modules` and their dependencies, as paths inside the kernel's module tree, in load order.
pub fn module_paths(tree: &Path, kver: &str, modules: &[&str]) -> Result<Vec<String>> {
    let base = format!("lib/modules/{kver}");
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![format!("{base}/kernel")];
    while let Some(dir) = stack.pop() {
        let full = tree.join(&dir);
        for entry in std::fs::read_dir(&full).with_context(|| format!("reading {}", full.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{dir}/{name}");
            if entry.file_type()?.is_dir() {
                stack.push(rel);
            } else if let Some(stem) = name.strip_suffix(".ko") {
                by_name.insert(stem.replace('_', "-"), rel);
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        tree: &Path,
        name: &str,
        by_name: &BTreeMap<String, String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        let key = name.replace('_', "-");
        if !seen.insert(key.clone()) {
            return Ok(());
        }
        let rel = by_name
            .get(&key)
            .with_context(|| format!("kernel module {name} (.ko, uncompressed) not found"))?;
        let data = std::fs::read(tree.join(rel))?;
        for dep in module_depends(&data).with_context(|| format!("reading {rel}"))? {
            visit(tree, &dep, by_name, seen, order)?;
        }
        order.push(rel.clone());
        Ok(())
    }
    for m in modules {
        visit(tree, m, &by_name, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// The dom0 base system: everything but the scenarios.
pub fn base(tree: &Path, kver: &str) -> Result<Image> {
    let mut img = Image::default();
    img.busybox(tree)?;
    img.program(tree, "bin/bash", "bin/bash")?;
    img.program(tree, "usr/bin/flock", "usr/bin/flock")?;
    for p in XEN_PROGRAMS {
        let rel = format!("{XEN_BIN}/{p}");
        img.program(tree, &rel, &rel)?;
    }
    for entry in std::fs::read_dir(tree.join("usr/bin"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The xenstore tools; xenstore-control is a link to Debian's version-picking wrapper script.
        if name.starts_with("xenstore") && entry.file_type()?.is_file() {
            let rel = format!("usr/bin/{name}");
            img.program(tree, &rel, &rel)?;
        }
    }
    for lib in DLOPENED {
        img.library(tree, lib)?;
    }
    let interp = format!("{}/ld-linux-x86-64.so.2", LIB_DIRS[0]);
    img.add(&interp, 0o755, Payload::Bytes(read_in_tree(tree, INTERP)?));
    img.link(INTERP, &format!("/{interp}"));
    img.tree_dir(tree, "etc/xen")?;
    let modules = module_order(tree, kver)?;
    for m in &modules {
        img.add(m, 0o644, Payload::Bytes(std::fs::read(tree.join(m))?));
    }
    let list: String = modules.iter().map(|m| format!("/{m}\n")).collect();
    img.add("pvkit/modules", 0o644, Payload::Bytes(list.into_bytes()));
    img.add("init", 0o755, Payload::Bytes(INIT_SCRIPT.as_bytes().to_vec()));
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_tree() {
        let dir = std::env::temp_dir().join(format!("pvkit-xen-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib/x")).unwrap();
        std::fs::create_dir_all(dir.join("lib64")).unwrap();
        std::fs::write(dir.join("lib/x/real.so.1.2"), b"inside").unwrap();
        std::os::unix::fs::symlink("real.so.1.2", dir.join("lib/x/real.so.1")).unwrap();
        // Absolute: must resolve in the tree, not on the host.
        std::os::unix::fs::symlink("/lib/x/real.so.1", dir.join("lib64/abs")).unwrap();
        std::os::unix::fs::symlink("../lib/x/real.so.1", dir.join("lib64/rel")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.join("lib64/escape")).unwrap();
        std::os::unix::fs::symlink("loop", dir.join("lib64/loop")).unwrap();
        assert_eq!(read_in_tree(&dir, "lib/x/real.so.1").unwrap(), b"inside");
        assert_eq!(read_in_tree(&dir, "lib64/abs").unwrap(), b"inside");
        assert_eq!(read_in_tree(&dir, "/lib64/rel").unwrap(), b"inside");
        assert!(read_in_tree(&dir, "lib64/escape").is_err());
        assert!(read_in_tree(&dir, "lib64/loop").is_err());
        assert!(read_in_tree(&dir, "lib64/missing").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_win_over_links() {
        let mut img = Image::default();
        img.link("bin/sh", "/bin/busybox");
        img.add("bin/sh", 0o755, Payload::Bytes(b"real".to_vec()));
        img.link("bin/sh", "/bin/busybox");
        assert!(img.contains("/bin/sh"));
        assert!(img.links.is_empty());
    }
}
