//! The operator kit in `deploy/`: the systemd unit (systemd-analyze), the Prometheus example (promtool), the Kubernetes manifests and the Dockerfile.

use crate::support::tool;
use creditwatch::config::Config;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unit with its binary path pointed at the binary under test, so `verify` can check that
/// the commands exist; written under the unit's own name, which `verify` also checks.
fn unit_copy(dir: &Path) -> PathBuf {
    let text = read("deploy/creditwatch.service").replace(
        "/usr/local/bin/creditwatch",
        env!("CARGO_BIN_EXE_creditwatch"),
    );
    let path = dir.join("creditwatch.service");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `Key=value` settings of one section of a unit file (comments and blank lines dropped).
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("Key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn systemd_unit_passes_verify_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let analyze = tool("systemd-analyze");
    let (ok, out, err) = run(Command::new(&analyze).arg("verify").arg(&unit));
    assert!(ok, "systemd-analyze verify failed:\n{out}{err}");
    assert_eq!(format!("{out}{err}").trim(), "", "verify complained");

    let text = read("deploy/creditwatch.service");
    let service = unit_settings(&text, "Service");
    let get = |k: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "creditwatch"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(get(key), vec![want], "{key}");
    }

    // The offline security audit scores the sandbox; 0 is a locked-down unit, 10 an open one.
    let (ok, out, err) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    assert!(ok, "systemd-analyze security failed:\n{out}{err}");
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for creditwatch.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{out}");

    // The pre-start check is the real CLI: it passes on a valid config written where the unit
    // expects one (here, a temp dir).
    let pre = get("ExecStartPre")[0];
    let cfg = dir.path().join("creditwatch.toml");
    std::fs::write(
        &cfg,
        "state_path = \"/var/lib/creditwatch/creditwatch.db\"\n[[account]]\nname = \"a\"\n\
         provider = \"fluximage\"\napi_key_env = \"CW_TEST_KEY\"\nbilling_anchor = \"2026-01-15\"\n",
    )
    .unwrap();
    let args: Vec<String> = pre
        .replace(
            "/etc/creditwatch/creditwatch.toml",
            &cfg.display().to_string(),
        )
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_creditwatch"))
        .args(&args)
        .env("CW_TEST_KEY", "k"));
    assert!(ok, "{pre}: {out}{err}");
    assert_eq!(
        get("ExecStart")[0],
        "/usr/local/bin/creditwatch run -c /etc/creditwatch/creditwatch.toml"
    );
}

#[test]
fn prometheus_example_passes_promtool_with_the_shipped_rules() {
    // Laid out as the file's header tells operators to: the rules under rules/ beside it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, read("deploy/prometheus.yml")).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/creditwatch.rules.yml"),
        read("alerts/creditwatch.rules.yml"),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(&config));
    assert!(ok, "promtool check config failed:\n{out}{err}");
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
    assert!(
        out.contains("rules/creditwatch.rules.yml") && out.contains("rules found"),
        "the rule file was not checked:\n{out}"
    );

    let y: Value = serde_yaml_ng::from_str(&read("deploy/prometheus.yml")).unwrap();
    let job = &y["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("creditwatch"));
    let target = job["static_configs"][0]["targets"][0].as_str().unwrap();
    assert!(target.ends_with(":9477"), "{target}");
}

/// Every document of every file the kustomization lists, by kind and name.
fn manifests() -> BTreeMap<(String, String), Value> {
    let k: Value = serde_yaml_ng::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml must list every manifest"
    );
    let mut out = BTreeMap::new();
    for file in listed {
        let text = read(&format!("deploy/kubernetes/{file}"));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"));
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no metadata.name"));
            assert!(v["apiVersion"].is_string(), "{file}: no apiVersion");
            out.insert((kind.to_string(), name.to_string()), v);
        }
    }
    out
}

use serde::Deserialize as _;

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_fit_together() {
    let m = manifests();
    let get = |kind: &str, name: &str| {
        m.get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {name}; have {:?}", m.keys()))
    };
    let dep = get("Deployment", "creditwatch");
    let spec = &dep["spec"];
    assert_eq!(
        spec["replicas"].as_i64(),
        Some(1),
        "one writer of the store"
    );
    assert_eq!(spec["strategy"]["type"].as_str(), Some("Recreate"));
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let port = &c["ports"][0];
    assert_eq!(port["name"].as_str(), Some("http"));
    assert_eq!(port["containerPort"].as_i64(), Some(9477));
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/-/ready")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/-/healthy")
    );

    // Every mount names a volume, and every volume's source exists.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut mounts = BTreeMap::new();
    for mnt in c["volumeMounts"].as_sequence().unwrap() {
        let name = mnt["name"].as_str().unwrap();
        let vol = volumes
            .get(name)
            .unwrap_or_else(|| panic!("mount of unknown volume {name}"));
        mounts.insert(mnt["mountPath"].as_str().unwrap().to_string(), *vol);
    }
    let config_vol = mounts["/etc/creditwatch/config"];
    let cm = get(
        "ConfigMap",
        config_vol["configMap"]["name"].as_str().unwrap(),
    );
    let keys_vol = mounts["/etc/creditwatch/keys"];
    let secret = get("Secret", keys_vol["secret"]["secretName"].as_str().unwrap());
    let state_vol = mounts["/var/lib/creditwatch"];
    let pvc = get(
        "PersistentVolumeClaim",
        state_vol["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        pvc["spec"]["accessModes"][0].as_str(),
        Some("ReadWriteOnce")
    );

    // The container runs the real CLI on the mounted config.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..3],
        ["run", "-c", "/etc/creditwatch/config/creditwatch.toml"]
    );

    // The config in the ConfigMap is valid, keeps its store on the volume, and every key file it
    // names is an entry of the Secret (written out here as the kubelet would mount it).
    let toml = cm["data"]["creditwatch.toml"].as_str().unwrap();
    let keys = tempfile::tempdir().unwrap();
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        std::fs::write(keys.path().join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = keys.path().join(k.as_str().unwrap());
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
    }
    let local = toml.replace("/etc/creditwatch/keys", &keys.path().display().to_string());
    let (cfg, warnings) = Config::parse(
        &local,
        Path::new("creditwatch.toml"),
        Path::new("/etc/creditwatch/config"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's config is invalid:\n{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!cfg.accounts.is_empty());
    assert_eq!(
        cfg.state_path,
        Path::new("/var/lib/creditwatch/creditwatch.db")
    );
    assert_eq!(cfg.listen.port(), 9477);

    // The Service selects the pods and exposes the named port; the ServiceMonitor selects the
    // Service and scrapes that port.
    let svc = get("Service", "creditwatch");
    assert!(labels_match(&svc["spec"]["selector"], pod_labels));
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["targetPort"].as_str(), Some("http"));
    let sm = get("ServiceMonitor", "creditwatch");
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert!(labels_match(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc_port["name"]);
    assert_eq!(
        sm["spec"]["endpoints"][0]["path"].as_str(),
        Some("/metrics")
    );
}

/// Dockerfile instructions with line continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// Docker cannot run here, so this checks what can be checked without it: two stages, a musl
/// (static) build, an empty final image with a non-root user, context paths that exist, and an
/// entrypoint that is the real CLI.
#[test]
fn dockerfile_builds_a_static_binary_into_an_empty_image() {
    let ins = instructions(&read("deploy/Dockerfile"));
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    let (builder, stage) = froms[0].split_once(" AS ").expect("named build stage");
    assert!(
        builder.contains("alpine"),
        "musl (static) builder: {builder}"
    );
    assert_eq!(froms[1], "scratch");
    let runs: String = ins
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(runs.contains("musl-dev"));
    assert!(runs.contains("cargo build --release --locked"));

    let mut final_stage = false;
    for (op, args) in &ins {
        if op == "FROM" {
            final_stage = args == "scratch";
        }
        if op != "COPY" {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        let from = parts.iter().find_map(|p| p.strip_prefix("--from="));
        let paths: Vec<&str> = parts
            .iter()
            .filter(|p| !p.starts_with("--"))
            .copied()
            .collect();
        match from {
            Some(s) => assert_eq!(s, stage, "COPY from an unknown stage"),
            None => {
                assert!(
                    !final_stage,
                    "the final image copies only from the build stage"
                );
                for src in &paths[..paths.len() - 1] {
                    assert!(
                        repo(src).exists(),
                        "COPY source {src} is not in the repository"
                    );
                }
            }
        }
    }
    let last = |op: &str| {
        ins.iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {op}"))
    };
    let user = last("USER");
    assert!(
        !user.starts_with('0') && user != "root",
        "runs as root: {user}"
    );
    assert_eq!(last("EXPOSE"), "9477");
    let entrypoint: Vec<String> = serde_json::from_str(&last("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint, ["/creditwatch"]);
    let cmd: Vec<String> = serde_json::from_str(&last("CMD")).expect("exec form");
    assert_eq!(cmd[..3], ["run", "-c", "/etc/creditwatch/creditwatch.toml"]);
    assert_eq!(cmd[3..], ["--listen", "0.0.0.0:9477"]);

    // The revision reaches creditwatch_build_info through build.rs.
    assert!(
        ins.iter()
            .any(|(op, a)| op == "ENV" && a.contains("CREDITWATCH_REVISION="))
    );
    assert!(read("build.rs").contains("CREDITWATCH_REVISION"));
    let ignore = read(".dockerignore");
    for p in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}
