//! The `modelgate` command line: parse arguments, load the config, set up
//! logging, and hand over to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelgate::config::{Config, LogFormat};
use modelgate::server::{self, App};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "modelgate",
    version,
    about = "A streaming, verifying pull-through proxy for OCI registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "config/modelgate.toml")]
        config: PathBuf,
    },
    /// Evaluate the policy for one image against its upstream and print the
    /// decision with every reason (exit 0 admitted, 1 denied, 2 error).
    Check {
        /// host[:port]/repository[:tag][@digest]; host is an upstream name or modelgate's listen address
        image: String,
        #[arg(long, default_value = "config/modelgate.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a key pair: PREFIX.key (PKCS#8 PEM) and PREFIX.pub (SPKI PEM, cosign.pub format).
    Keygen {
        /// Path prefix of the two files, e.g. config/keys/release (existing files are not overwritten).
        #[arg(long)]
        out: String,
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: KeyAlgorithm,
    },
    /// Sign an image digest in cosign's format and push the signature to the registry in IMAGE.
    Sign {
        /// PKCS#8 PEM private key (from `modelgate keygen`).
        #[arg(long)]
        key: PathBuf,
        /// host[:port]/repository[:tag][@digest]
        image: String,
        /// legacy: the sha256-<hex>.sig tag (cosign v2); bundle: a Sigstore bundle v0.3 referrer (cosign v3).
        #[arg(long, value_enum, default_value = "legacy")]
        format: SigFormatArg,
        /// Sign this digest (it need not be pushed yet).
        #[arg(long)]
        digest: Option<String>,
        /// With --digest and --format bundle: the subject's media type.
        #[arg(long)]
        media_type: Option<String>,
        /// With --digest and --format bundle: the subject manifest's size in bytes.
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Move a channel tag (e.g. prod) to a release, through the gate, saying why.
    Promote {
        /// host[:port]/repository:CHANNEL
        image: String,
        /// The release to point the channel at (a tag such as v1.3.0, or a digest).
        #[arg(long)]
        to: String,
        /// Why (kept in the release ledger and the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Move a channel tag back: to --to, or to where it pointed before its last move.
    Rollback {
        /// host[:port]/repository:CHANNEL
        image: String,
        #[arg(long)]
        to: Option<String>,
        /// Why (kept in the release ledger and the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// The release ledger of a repository (or one tag): releases and channel
    /// moves with digest, version, facts, who, when and why.
    History {
        /// host[:port]/repository[:tag]; host is an upstream name or modelgate's listen address
        image: String,
        #[arg(long, default_value = "config/modelgate.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify a Sigstore bundle over a file (or sha256:<hex>) with the gate's
    /// verification core (sigstore-conformance CLI protocol). Exit 0
    /// verified, 1 rejected, 2 unusable input.
    VerifyBundle {
        #[arg(long)]
        bundle: PathBuf,
        /// The certificate's subject (SAN) exactly; with --certificate-oidc-issuer.
        #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
        certificate_identity: Option<String>,
        /// The OIDC issuer exactly.
        #[arg(long, requires = "certificate_identity", conflicts_with = "key")]
        certificate_oidc_issuer: Option<String>,
        /// A managed public key (PEM) instead of a certificate identity.
        #[arg(long, required_unless_present = "certificate_identity")]
        key: Option<PathBuf>,
        #[arg(long, default_value = "config/trust/sigstore-public-good.json")]
        trusted_root: PathBuf,
        /// The signed file, or sha256:<hex>.
        file_or_digest: String,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Inspect and maintain the cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, default_value = "config/modelgate.toml", global = true)]
        config: PathBuf,
    },
}

/// How to reach a registry (modelgate or another).
#[derive(clap::Args)]
struct ConnArgs {
    /// Talk plain HTTP to the registry (loopback test registries).
    #[arg(long)]
    plain_http: bool,
    #[arg(long, env = "MODELGATE_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Name of the environment variable holding the registry password.
    #[arg(long)]
    password_env: Option<String>,
    /// Extra CA certificate (PEM) for an https registry.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

impl ConnArgs {
    fn connection(self) -> anyhow::Result<modelgate::commands::Connection> {
        let password = match self.password_env {
            Some(v) => {
                Some(std::env::var(&v).with_context(|| format!("--password-env {v} is not set"))?)
            }
            None => None,
        };
        Ok(modelgate::commands::Connection {
            plain_http: self.plain_http,
            username: self.username,
            password,
            ca_cert: self.ca_cert,
        })
    }
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Parse and validate a policy; print the rules as understood and every
    /// problem with its line (exit 2 when there are errors, as for a
    /// file that does not parse).
    Lint {
        /// The policy file, e.g. config/policy.toml.
        file: PathBuf,
        /// Check repository globs against this config's upstream names
        /// (default: config/modelgate.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum KeyAlgorithm {
    Ed25519,
    EcdsaP256,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum SigFormatArg {
    Legacy,
    Bundle,
}

#[derive(Subcommand, Clone, Copy)]
enum CacheAction {
    /// Re-hash every cached object; remove the ones whose bytes are wrong.
    Verify,
    /// Show how much the cache holds.
    Stats,
    /// Evict least recently used entries down to cache.max_bytes.
    Gc,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&config)?;
    init_logging(cfg.log_format);
    let tls = match &cfg.tls {
        Some((c, k)) => Some(server::tls_acceptor(c, k)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?,
        ),
        None => None,
    };
    let app = App::new(cfg)?;
    app.registry().store().lock_exclusive()?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
        tls = tls.is_some(),
        upstreams = ?app.router().upstreams().iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
        cache = %app.config().cache_dir.display(),
        "modelgate serving"
    );
    server::run(app, listener, admin, tls, shutdown_signal()).await;
    Ok(())
}

/// `promote` and `rollback`: move a channel through the gate.
fn release(
    image: String,
    to: Option<String>,
    reason: String,
    conn: ConnArgs,
) -> anyhow::Result<()> {
    let args = modelgate::commands::ReleaseArgs {
        image,
        to,
        reason,
        conn: conn.connection()?,
    };
    let line = runtime()?
        .block_on(modelgate::commands::promote(args))
        .map_err(anyhow::Error::msg)?;
    println!("{line}");
    Ok(())
}

/// `sign`: the digest given (with its media type and size) or the one
/// IMAGE names.
fn sign(
    key: PathBuf,
    image: String,
    format: SigFormatArg,
    (digest, media_type, size): (Option<String>, Option<String>, Option<u64>),
    conn: ConnArgs,
) -> anyhow::Result<()> {
    let digest = digest
        .map(|d| d.parse().map_err(|e| anyhow::anyhow!("--digest: {e}")))
        .transpose()?;
    let args = modelgate::commands::SignArgs {
        key,
        image,
        bundle: format == SigFormatArg::Bundle,
        digest,
        media_type,
        size,
        conn: conn.connection()?,
    };
    runtime()?
        .block_on(modelgate::commands::sign(args))
        .map_err(anyhow::Error::msg)
}

/// `check`: exit 0 admitted, 1 denied, 2 error.
fn check(image: &str, config: &std::path::Path, json: bool) -> ExitCode {
    let output = match json {
        true => modelgate::commands::Output::Json,
        false => modelgate::commands::Output::Human,
    };
    let code = match runtime() {
        Ok(rt) => rt.block_on(modelgate::commands::check(config, image, output)),
        Err(e) => {
            eprintln!("modelgate: {e:#}");
            2
        }
    };
    ExitCode::from(code)
}

/// `verify-bundle`: exit 0 verified, 1 rejected, 2 unusable input.
fn verify_bundle(
    bundle: PathBuf,
    (key, certificate_identity, certificate_oidc_issuer): (
        Option<PathBuf>,
        Option<String>,
        Option<String>,
    ),
    trusted_root: PathBuf,
    file_or_digest: String,
) -> ExitCode {
    use modelgate::commands::{Expected, Refusal, VerifyBundleArgs};
    let expected = match (key, certificate_identity, certificate_oidc_issuer) {
        (Some(k), _, _) => Expected::Key(k),
        (None, Some(identity), Some(issuer)) => Expected::Identity { identity, issuer },
        _ => unreachable!("clap requires a key or an identity with its issuer"),
    };
    let args = VerifyBundleArgs {
        bundle,
        expected,
        trusted_root,
        artifact: file_or_digest,
    };
    match modelgate::commands::verify_bundle(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(Refusal::Rejected(why)) => {
            eprintln!("modelgate: not verified: {why}");
            ExitCode::from(1)
        }
        Err(Refusal::Unusable(why)) => {
            eprintln!("modelgate: {why}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Keep freed body buffers in the process instead of handing them back to
/// the kernel. A cold download holds each upstream frame until it is written
/// and sent, so hyper reads into a fresh buffer every time; with glibc's
/// defaults those buffers were mmapped (or the arena trimmed) and every page
/// faulted in and zeroed again: 9% of a cold pull's CPU in `perf`
/// (`clear_page_erms` under `recv`), 0.4 CPU-seconds per GiB
/// (`benches/cold-cpu.sh`). The working set is bounded by the download
/// windows (`modelgate::cache::flight`), so what is kept is bounded too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    const MMAP_THRESHOLD: libc::c_int = 4 << 20;
    const TRIM_THRESHOLD: libc::c_int = 8 << 20;
    // Each arena keeps up to TRIM_THRESHOLD: fewer arenas bound the total.
    const ARENAS: libc::c_int = 4;
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            image,
            config,
            json,
        } => return check(&image, &config, json),
        Command::Keygen { out, algorithm } => {
            let alg = match algorithm {
                KeyAlgorithm::Ed25519 => modelgate::trust::keys::Algorithm::Ed25519,
                KeyAlgorithm::EcdsaP256 => modelgate::trust::keys::Algorithm::EcdsaP256,
            };
            modelgate::commands::keygen(&out, alg).map_err(anyhow::Error::msg)
        }
        Command::VerifyBundle {
            bundle,
            certificate_identity,
            certificate_oidc_issuer,
            key,
            trusted_root,
            file_or_digest,
        } => {
            return verify_bundle(
                bundle,
                (key, certificate_identity, certificate_oidc_issuer),
                trusted_root,
                file_or_digest,
            )
        }
        Command::Policy {
            action: PolicyAction::Lint { file, config },
        } => {
            let default = PathBuf::from("config/modelgate.toml");
            let config = config.or_else(|| default.exists().then_some(default));
            modelgate::commands::policy_lint(&file, config.as_deref()).map_err(anyhow::Error::msg)
        }
        Command::Sign {
            key,
            image,
            format,
            digest,
            media_type,
            size,
            conn,
        } => sign(key, image, format, (digest, media_type, size), conn),
        Command::Promote {
            image,
            to,
            reason,
            conn,
        } => release(image, Some(to), reason, conn),
        Command::Rollback {
            image,
            to,
            reason,
            conn,
        } => release(image, to, reason, conn),
        Command::History {
            image,
            config,
            json,
        } => modelgate::commands::history::history(&config, &image, json)
            .map(|out| print!("{out}"))
            .map_err(anyhow::Error::msg),
        Command::Serve { config } => {
            keep_freed_buffers();
            runtime().and_then(|rt| rt.block_on(serve(config)))
        }
        Command::Cache { action, config } => {
            let action = match action {
                CacheAction::Verify => modelgate::commands::CacheAction::Verify,
                CacheAction::Stats => modelgate::commands::CacheAction::Stats,
                CacheAction::Gc => modelgate::commands::CacheAction::Gc,
            };
            modelgate::commands::cache(action, &config).map_err(anyhow::Error::msg)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelgate: {e:#}");
            ExitCode::from(2)
        }
    }
}
