//! Ports, child processes and the `modelgate` binary.

/// A free loopback port (for servers that take a port, not a listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct free loopback ports (all held until all are chosen, so
/// none is handed out twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Start `cmd` with no input and its output in `log`.
pub fn spawn_logged(
    cmd: &mut std::process::Command,
    log: &std::path::Path,
) -> std::io::Result<std::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(std::fs::File::create(log)?))
        .spawn()
}

/// A config for the command-line tools in `dir`: upstream `registry.test`
/// at `upstream_url`, the `policy.toml` in `dir`, its own cache and audit
/// log. Returns its path.
pub fn check_config(dir: &std::path::Path, upstream_url: &str) -> std::path::PathBuf {
    let cfg = dir.join("modelgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[cache]\ndir = \"{}\"\n[policy]\nfile = \"{}\"\n[audit]\npath = \"{}\"\n{}",
            dir.join("check-cache").display(),
            dir.join("policy.toml").display(),
            dir.join("check-audit.log").display(),
            super::gate::upstream_toml("registry.test", upstream_url, true, "")
        ),
    )
    .unwrap();
    cfg
}

/// The `modelgate` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelgate")
}

/// Runs `cmd`, which must succeed (else its stderr is the failure); returns
/// its output.
pub fn output_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("command started");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run the `modelgate` binary: (exit code, stdout + stderr).
pub fn modelgate_cli<I, S>(args: I) -> (Option<i32>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run modelgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `modelgate cache <action> --config <cfg>`.
pub fn cache_cli(action: &str, cfg: &std::path::Path) -> (Option<i32>, String) {
    modelgate_cli([
        std::ffi::OsStr::new("cache"),
        std::ffi::OsStr::new(action),
        std::ffi::OsStr::new("--config"),
        cfg.as_os_str(),
    ])
}

/// An htpasswd file in `dir` with user `ci-bot`, password `s3cret`; returns
/// the `[server]` line that uses it.
pub fn htpasswd_with_ci_bot(dir: &std::path::Path) -> String {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("ci-bot:{hash}\n")).unwrap();
    format!("htpasswd = \"{}\"", dir.join("htpasswd").display())
}

/// Send `signal` (e.g. "TERM", "KILL") to `child`, by its PID.
pub fn signal(child: &std::process::Child, signal: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{signal} {}", child.id());
}
