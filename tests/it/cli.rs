//! The compiled `modelgate` binary: the shipped quick-start config, `serve`
//! with SIGTERM, the cache tools, and config errors.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn shipped_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = modelgate::config::Config::load(&root.join("config/modelgate.toml")).unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:5000");
    assert!(cfg.upstreams.iter().any(|u| u.default));
}

#[test]
fn bad_config_exits_2_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[server]\nlisten = \"127.0.0.1:0\"\nlisten_typo = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_typo"), "{err}");
    let out = Command::new(bin())
        .args(["serve", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/x.toml"));
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the OS error once: {err}"
    );
}

/// Issue #7 items 8 and 23: lint names lines and exits 1 on errors; help
/// texts exist.
#[test]
fn policy_lint_names_lines_and_help_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("p.toml");
    std::fs::write(
        &policy,
        "[[rules]]\nname = \"all\"\nrepositories = [\"*/models/**\"]\n[rules.tags]\nimmutable = true\n[[rules]]\nname = \"team\"\nrepositories = [\"docker.io/models/team/**\"]\n[rules.tags]\nimmutable = true\n[[rules]]\nname = \"bad\"\nrepositories = [\"models/**\"]\n[rules.tags]\nimmutable = true\n",
    )
    .unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["policy", "lint"])
        .arg(&policy)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(
            "error: line 13: rule \"bad\": repository glob \"models/**\" can never match"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: line 6: rule \"team\" is shadowed"),
        "{text}"
    );
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    output_ok(Command::new(bin()).current_dir(shipped).args([
        "policy",
        "lint",
        "config/policy.toml",
    ]));
    // The shipped model-artifact rule, uncommented, lints clean too.
    let text = std::fs::read_to_string(shipped.join("config/policy.toml")).unwrap();
    let start = text
        .find("# --- model artifacts")
        .expect("model rule in the shipped policy");
    let end = text.find("# --- end of model artifacts").unwrap();
    let rule: String = text[start..end]
        .lines()
        .skip(3)
        .map(|l| l.strip_prefix("# ").unwrap_or(l).to_string() + "\n")
        .collect();
    // A copy of config/, so that the paths the policy names resolve.
    let copy = tempfile::tempdir().unwrap();
    output_ok(
        Command::new("cp")
            .arg("-r")
            .arg(shipped.join("config"))
            .arg(copy.path()),
    );
    let with_models = copy.path().join("config/policy.toml");
    std::fs::write(&with_models, format!("{}\n{rule}", &text[..start])).unwrap();
    let out = Command::new(bin())
        .current_dir(copy.path())
        .args(["policy", "lint", "config/policy.toml"])
        .output()
        .unwrap();
    let lint =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{lint}");
    assert!(
        !lint.contains("warning")
            && lint.contains("kinds admitted: docker-model, modelpack, kitops"),
        "{lint}"
    );
    for (cmd, needle) in [
        (vec!["keygen", "--help"], "Path prefix of the two files"),
        (vec!["policy", "lint", "--help"], "The policy file"),
    ] {
        let out = Command::new(bin()).args(&cmd).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(needle), "{cmd:?}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pull_sigterm_then_cache_tools() {
    let up = Mock::start().await;
    let blobs: Vec<_> = (0..3)
        .map(|i| up.state.add_blob(data(100_000, i)))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = free_port();
    let cfg = tmp.path().join("modelgate.toml");
    let write_cfg = |max: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nlog_format = \"json\"\n[cache]\ndir = \"{}\"\nmax_bytes = \"{max}\"\n{}",
                tmp.path().join("cache").display(),
                upstream_toml("local", &up.url(), true, "")
            ),
        )
        .unwrap()
    };
    write_cfg("10MiB");
    let mut child = spawn_logged(
        Command::new(bin()).args(["serve", "--config"]).arg(&cfg),
        &tmp.path().join("log"),
    )
    .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(1),
            client().get(format!("http://127.0.0.1:{admin}/readyz").parse().unwrap()),
        )
        .await
        {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "modelgate did not become ready");
    for d in &blobs {
        let r = get(&format!("http://127.0.0.1:{port}/v2/r/blobs/{d}")).await;
        assert_eq!(r.status, 200);
    }
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).await;
    let text = String::from_utf8_lossy(metrics.bytes()).to_string();
    assert_eq!(
        metric_value(
            &text,
            "modelgate_cache_requests_total{kind=\"blob\",result=\"miss\"}"
        ),
        3.0
    );
    // SIGTERM, by PID.
    signal(&child, "TERM");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = exited else {
        let _ = child.kill();
        panic!("modelgate did not exit within 5s of SIGTERM");
    };
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("SIGTERM")),
        "json log: {log}"
    );

    let run = |args: &[&str]| cache_cli(args[0], &cfg);
    let (code, out) = run(&["stats"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("objects   3") && out.contains("bytes     300000"),
        "{out}"
    );
    let (code, out) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checked 3 objects"), "{out}");
    // Damage one blob: verify finds it, removes it, exits non-zero.
    std::fs::write(
        tmp.path().join("cache/blobs/sha256").join(blobs[1].hex()),
        b"rot",
    )
    .unwrap();
    let (code, out) = run(&["verify"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&format!("CORRUPT {}", blobs[1])), "{out}");
    assert!(!tmp
        .path()
        .join("cache/blobs/sha256")
        .join(blobs[1].hex())
        .exists());
    // gc down to a smaller bound.
    write_cfg("150000");
    let (code, out) = run(&["gc"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("evicted 1 objects"), "{out}");
    let (_, out) = run(&["stats"]);
    assert!(out.contains("objects   1"), "{out}");
}
