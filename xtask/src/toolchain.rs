//! The pinned toolchain's targets and components, checked before anything is built.
//!
//! `rust-toolchain.toml` pins a toolchain and names the target the guest needs
//! (`x86_64-unknown-none`) and the components the lints need (rustfmt, clippy). rustup installs
//! those when it installs the toolchain, but not when the toolchain is already there: a fresh
//! machine can have the pinned version without the guest target, and the first guest build then
//! fails with "can't find crate for `core`". xtask therefore looks at the active toolchain itself
//! (the sysroot `rustc` reports, and `rustup component list --installed`) and asks rustup for what
//! is missing, once, before its first nested cargo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::workspace;

/// What `rust-toolchain.toml` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub channel: String,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// Parses the few keys xtask needs from `rust-toolchain.toml` (a flat `[toolchain]` table of strings
/// and string arrays; anything else is ignored).
pub fn parse_pinned(text: &str) -> Result<Pinned> {
    let mut p = Pinned {
        channel: String::new(),
        targets: Vec::new(),
        components: Vec::new(),
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let strings = || -> Vec<String> {
            value
                .split(['[', ']', ','])
                .map(|s| s.trim().trim_matches('"').to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        match key.trim() {
            "channel" => p.channel = strings().into_iter().next().unwrap_or_default(),
            "targets" => p.targets = strings(),
            "components" => p.components = strings(),
            _ => {}
        }
    }
    if p.channel.is_empty() {
        bail!("rust-toolchain.toml names no channel");
    }
    Ok(p)
}

/// Which of `pinned`'s targets lack a standard library in `sysroot`, and which of its components
/// are not in `installed` (rustup's `component list --installed` lines, e.g. `clippy-x86_64-unknown-linux-gnu`).
pub fn missing(pinned: &Pinned, sysroot: &Path, installed: &str) -> (Vec<String>, Vec<String>) {
    let targets = pinned
        .targets
        .iter()
        .filter(|t| !sysroot.join("lib/rustlib").join(t).join("lib").is_dir())
        .cloned()
        .collect();
    let components = pinned
        .components
        .iter()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.trim() == c.as_str() || l.trim().starts_with(&format!("{c}-")))
        })
        .cloned()
        .collect();
    (targets, components)
}

/// `rustc --print sysroot` of the toolchain nested cargo will use (the workspace's pinned one).
fn sysroot() -> Result<PathBuf> {
    let mut cmd = Command::new("rustc");
    cmd.current_dir(workspace::root()).args(["--print", "sysroot"]);
    workspace::sanitize(&mut cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running `rustc --print sysroot` (is rustup installed?)")?;
    if !out.status.success() {
        bail!("`rustc --print sysroot` failed: {}", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub fn rustup(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace::root()).args(args);
    workspace::sanitize(&mut cmd);
    cmd
}

/// Makes sure the pinned toolchain has its targets and components; installs what is missing with
/// rustup. Runs once per xtask process.
pub fn ensure() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| ensure_uncached().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// [`ensure`] again, not cached (after a stage took a target away on purpose).
pub fn ensure_again() -> Result<()> {
    ensure_uncached()
}

fn ensure_uncached() -> Result<()> {
    let file = workspace::root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let pinned = parse_pinned(&text)?;
    let sysroot = sysroot()?;
    let listed = rustup(&["component", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (targets, components) = missing(&pinned, &sysroot, &listed);
    if !targets.is_empty() {
        eprintln!(
            "toolchain: {} lacks target(s) {} (rustup does not add rust-toolchain.toml's targets to a \
             toolchain that is already installed); adding them",
            pinned.channel,
            targets.join(", ")
        );
        let mut args = vec!["target", "add"];
        args.extend(targets.iter().map(String::as_str));
        workspace::run_visible(&mut rustup(&args))?;
    }
    if !components.is_empty() {
        eprintln!(
            "toolchain: {} lacks component(s) {}; adding them",
            pinned.channel,
            components.join(", ")
        );
        let mut args = vec!["component", "add"];
        args.extend(components.iter().map(String::as_str));
        workspace::run_visible(&mut rustup(&args))?;
    }
    let (targets, _) = missing(&pinned, &sysroot, "");
    if !targets.is_empty() {
        bail!(
            "after `rustup target add`, {} still has no standard library for {} under {}",
            pinned.channel,
            targets.join(", "),
            sysroot.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_repositorys_own_pin() {
        let text = std::fs::read_to_string(workspace::root().join("rust-toolchain.toml")).unwrap();
        let p = parse_pinned(&text).unwrap();
        assert!(!p.channel.is_empty());
        assert!(p.targets.contains(&workspace::GUEST_TARGET.to_owned()), "{p:?}");
        assert!(p.components.iter().any(|c| c == "clippy"), "{p:?}");
    }

    #[test]
    fn parses_arrays_and_comments() {
        let p = parse_pinned(
            "[toolchain]\nchannel = \"1.95.0\" # pinned\ncomponents = [\"rustfmt\", \"clippy\"]\n\
             targets = [ \"x86_64-unknown-none\" ]\nprofile = \"minimal\"\n",
        )
        .unwrap();
        assert_eq!(p.channel, "1.95.0");
        assert_eq!(p.targets, ["x86_64-unknown-none"]);
        assert_eq!(p.components, ["rustfmt", "clippy"]);
        assert!(parse_pinned("[toolchain]\n").is_err());
    }

    #[test]
    fn a_sysroot_without_the_target_is_reported() {
        let dir = std::env::temp_dir().join(format!("pvkit-sysroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib/rustlib/x86_64-unknown-linux-gnu/lib")).unwrap();
        let p = Pinned {
            channel: "1.95.0".into(),
            targets: vec!["x86_64-unknown-none".into()],
            components: vec!["rustfmt".into(), "clippy".into()],
        };
        let installed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n";
        let (t, c) = missing(&p, &dir, installed);
        assert_eq!(t, ["x86_64-unknown-none"]);
        assert_eq!(c, ["rustfmt"]);
        std::fs::create_dir_all(dir.join("lib/rustlib/x86_64-unknown-none/lib")).unwrap();
        let (t, _) = missing(&p, &dir, installed);
        assert!(t.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
