//! The shipped Prometheus rules: promtool's checks and unit tests, and consistency with the runbook and each other.

use crate::support::tool;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The alerts of the product contract, with their severities.
pub const ALERTS: [(&str, &str); 6] = [
    ("CreditsExhaustionBeforeReset", "warning"),
    ("CreditsExhaustionImminent", "critical"),
    ("CreditsLow", "warning"),
    ("CreditsExhausted", "critical"),
    ("CreditwatchAccountDown", "warning"),
    ("ApiKeyExpiringSoon", "warning"),
];

const RULE_FILES: [&str; 2] = [
    "alerts/creditwatch.rules.yml",
    "alerts/creditwatch-prometheus-forecast.rules.yml",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_check_rules_is_clean() {
    let promtool = tool("promtool");
    for f in RULE_FILES {
        let out = run(Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(repo(f)));
        assert!(out.contains("SUCCESS"), "{f}: {out}");
    }
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let promtool = tool("promtool");
    let dir = repo("alerts/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one test file per rule file: {files:?}");
    let out = run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["test", "rules"])
        .args(&files));
    assert!(!out.contains("FAILED"), "{out}");
}

/// The `- alert:` blocks of a rule file, by name.
fn alert_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let parts: Vec<&str> = text.split("      - alert: ").collect();
    for p in &parts[1..] {
        let name = p.lines().next().unwrap().trim().to_string();
        let body = p
            .split("\n  - name: ")
            .next()
            .unwrap()
            .trim_end()
            .to_string();
        out.push((name, body));
    }
    out
}

#[test]
fn both_rule_files_have_every_alert_with_labels_and_annotations() {
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    for f in RULE_FILES {
        let text = std::fs::read_to_string(repo(f)).unwrap();
        let blocks = alert_blocks(&text);
        let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ALERTS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            "{f}"
        );
        for ((name, body), (_, severity)) in blocks.iter().zip(ALERTS) {
            assert!(
                body.contains(&format!("severity: {severity}\n")),
                "{f} {name}"
            );
            assert!(body.contains("\n        for: "), "{f} {name} has no for:");
            for a in ["summary: ", "description: ", "runbook_url: "] {
                assert!(body.contains(a), "{f} {name} has no {a}");
            }
            let anchor = name.to_lowercase();
            assert!(
                body.contains(&format!("/runbook#{anchor}\"")),
                "{f} {name}: runbook_url"
            );
            assert!(
                runbook.contains(&format!("\n## {name}\n")),
                "docs/runbook.md has no section {name}"
            );
        }
    }
}

#[test]
fn level_alerts_are_identical_in_both_rule_files() {
    let group = |f: &str| {
        let text = std::fs::read_to_string(repo(f)).unwrap();
        let i = text
            .find("  - name: creditwatch.level\n")
            .unwrap_or_else(|| panic!("{f} has no group creditwatch.level"));
        text[i..].to_string()
    };
    assert_eq!(group(RULE_FILES[0]), group(RULE_FILES[1]));
}
