//! Build script: records the source revision churnd is built from as `CHURND_REVISION`, for the
//! `revision` label of `churnd_build_info`.
//!
//! In order: the `CHURND_REVISION` environment variable when set and not empty (the container
//! build passes its `REVISION` build argument: the image is built without `.git`); else the
//! commit `git` reports for the source tree; else `unknown` (a source archive, no git).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CHURND_REVISION");
    let revision = std::env::var("CHURND_REVISION")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CHURND_REVISION={revision}");
}

/// The commit checked out (12 hex digits), and the files whose change means another one.
fn git_revision() -> Option<String> {
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (another branch checked out), the branch's ref
    // (a commit), and packed refs. Only files that exist: Cargo reruns a script on every
    // build when one it watches is missing.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(head)
}

/// What `git args` prints (trimmed), run in the crate's directory; `None` when git is missing
/// or fails (not a repository).
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}
