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
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
