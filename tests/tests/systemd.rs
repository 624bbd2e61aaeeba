//! The systemd units of both hosts pass `systemd-analyze verify` and stay hardened.
//!
//! `verify` checks that `ExecStart=` binaries exist, so it runs against a temporary root
//! holding stub binaries, the two units and the host's own system units (for the targets
//! they order against). It reports unknown keys and bad values as warnings with exit
//! status 0, so any output at all fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use cerebrum_tests::{workspace_root, TempDir};

const UNITS: &[(&str, &str)] = &[
    ("lsp-edge", "lsp-edge/systemd/lsp-edge.service"),
    ("vps-infer", "vps-infer/systemd/vps-infer.service"),
];

fn systemd_analyze() -> PathBuf {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("systemd-analyze is missing: install Debian's systemd package (apt-get install -y systemd)")
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest);
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(target, dest).unwrap();
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A root with the host's system units, stub binaries and our units installed.
fn install_root() -> TempDir {
    use std::os::unix::fs::PermissionsExt;

    let root = TempDir::new("systemd-root");
    let system = Path::new("/usr/lib/systemd/system");
    assert!(
        system.is_dir(),
        "{} is missing: install Debian's systemd package",
        system.display()
    );
    copy_dir(system, &root.path().join("usr/lib/systemd/system"));
    let bin = root.path().join("usr/local/bin");
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&units).unwrap();
    for (name, unit) in UNITS {
        let stub = bin.join(name);
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(
            workspace_root().join(unit),
            units.join(format!("{name}.service")),
        )
        .unwrap();
    }
    root
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(systemd_analyze())
        .args(args)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn both_units_pass_systemd_analyze_verify() {
    let root = install_root();
    let root_arg = format!("--root={}", root.path().display());
    for (name, _) in UNITS {
        let unit = format!("{name}.service");
        let (ok, output) = run(&["verify", "--man=no", &root_arg, &unit]);
        assert!(
            ok && output.trim().is_empty(),
            "systemd-analyze verify {unit}: success={ok}, output:\n{output}"
        );
    }
}

/// The check above is only worth something if verify really reads our files: a unit
/// with a misspelt key and a missing binary must be reported.
#[test]
fn verify_reports_a_broken_unit() {
    let root = install_root();
    let units = root.path().join("etc/systemd/system");
    let good = std::fs::read_to_string(units.join("lsp-edge.service")).unwrap();
    let bad = good
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
        .replace("/usr/local/bin/lsp-edge", "/usr/local/bin/no-such-binary");
    std::fs::write(units.join("broken.service"), bad).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let (ok, output) = run(&["verify", "--man=no", &root_arg, "broken.service"]);
    assert!(!ok, "a missing binary must fail verify:\n{output}");
    assert!(
        output.contains("ProtectSytem"),
        "the unknown key is reported:\n{output}"
    );
}

/// `systemd-analyze security` scores exposure from 0 (locked down) to 10; both services
/// must stay in its "OK" band.
#[test]
fn both_units_are_hardened() {
    let root = install_root();
    let root_arg = format!("--root={}", root.path().display());
    for (name, _) in UNITS {
        let unit = format!("{name}.service");
        // --threshold is in tenths: 20 means an exposure level of at most 2.0.
        let (ok, output) = run(&[
            "security",
            "--offline=true",
            "--threshold=20",
            &root_arg,
            &unit,
        ]);
        let summary = output
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("(no summary)");
        assert!(ok, "{unit} is exposed above 2.0: {summary}\n{output}");
    }
}

fn directives(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value<'a>(d: &'a [(String, String)], key: &str) -> Option<&'a str> {
    d.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn units_have_what_the_hosts_need() {
    let required = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
    ];
    for (name, path) in UNITS {
        let d = directives(path);
        for (key, want) in required {
            assert_eq!(value(&d, key), Some(want), "{path}: {key}");
        }
        let user = value(&d, "User").unwrap_or_else(|| panic!("{path}: no User="));
        assert!(
            user.starts_with("cerebrum-"),
            "{path}: dedicated user, got {user}"
        );
        assert!(
            value(&d, "EnvironmentFile").is_some_and(|f| f.starts_with("/etc/cerebrum/")),
            "{path}: EnvironmentFile under /etc/cerebrum"
        );
        assert!(
            value(&d, "ExecStart")
                .is_some_and(|c| c.starts_with(&format!("/usr/local/bin/{name} "))),
            "{path}: ExecStart runs /usr/local/bin/{name}"
        );
        let example = workspace_root()
            .join(path)
            .with_file_name(format!("{name}.env.example"));
        let env = std::fs::read_to_string(&example)
            .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        // Every ${VAR} the unit expands is set in the example environment file.
        let exec = value(&d, "ExecStart").unwrap();
        for var in exec.split('$').skip(1) {
            let var: String = var
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                env.lines().any(|l| l.starts_with(&format!("{var}="))),
                "{}: sets no {var}, which {path} uses",
                example.display()
            );
        }
        assert!(
            env.contains("CEREBRUM_API_KEY="),
            "{}: API key",
            example.display()
        );
    }
    let edge = directives("lsp-edge/systemd/lsp-edge.service");
    assert!(value(&edge, "MemoryMax").is_some(), "lsp-edge: MemoryMax");
    let infer = directives("vps-infer/systemd/vps-infer.service");
    assert!(
        value(&infer, "LimitNOFILE").is_some(),
        "vps-infer: LimitNOFILE"
    );
    assert!(
        value(&infer, "ReadOnlyPaths").is_some_and(|p| p.contains("/models")),
        "vps-infer: read-only model directory"
    );
}
