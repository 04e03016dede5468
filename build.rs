//! Build script: records the git revision for `creditwatch_build_info{revision}`.

use std::process::Command;

fn main() {
    // A build without the repository (a container build) can pass the revision in.
    println!("cargo:rerun-if-env-changed=CREDITWATCH_REVISION");
    if let Ok(rev) = std::env::var("CREDITWATCH_REVISION")
        && !rev.trim().is_empty()
    {
        println!("cargo:rustc-env=CREDITWATCH_REVISION={}", rev.trim());
        return;
    }
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CREDITWATCH_REVISION={rev}");
    // Asked of git rather than assumed at `.git/`: in a worktree `.git` is a file, and a path
    // that does not exist makes cargo run this script (and relink the binary) on every build.
    let git = |arg: &str| {
        Command::new("git")
            .args(["rev-parse", "--path-format=absolute", arg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| std::path::PathBuf::from(s.trim()))
    };
    if let (Some(dir), Some(common)) = (git("--git-dir"), git("--git-common-dir")) {
        // HEAD is the worktree's own; branches live in the common directory, loose or packed.
        for path in [
            dir.join("HEAD"),
            common.join("refs/heads"),
            common.join("packed-refs"),
        ] {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
