//! Server configuration (`config/modelgate.toml`): parsed once, validated once,
//! then immutable. Unknown fields are errors so a typo never silently turns a
//! setting off. Relative paths are resolved against the working directory.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `source`: the message already says it, and error chains
    // would print the OS error twice.
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    coordination: RawCoordination,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_env: Option<String>,
    secret_key_env: Option<String>,
    /// An AWS-style credentials file (`aws_access_key_id = ...`).
    credentials_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    /// Key prefix inside the bucket (several fleets can share one bucket).
    prefix: Option<String>,
    local_cache_bytes: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    redis: Option<String>,
    internal_listen: Option<String>,
    internal_advertise: Option<String>,
    internal_token_env: Option<String>,
    lease_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    admin_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    htpasswd: Option<PathBuf>,
    #[serde(default)]
    pull_auth: bool,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_log_format")]
    log_format: String,
    /// How long a client may take to send request headers.
    header_timeout: Option<String>,
    /// Upload sessions idle longer than this are dropped.
    upload_timeout: Option<String>,
    #[serde(default = "default_max_uploads")]
    max_uploads: usize,
    /// Upload sessions one client address may hold at once.
    #[serde(default = "default_max_uploads_per_client")]
    max_uploads_per_client: usize,
    /// Without `htpasswd`, pushes are refused unless this is true.
    #[serde(default)]
    allow_anonymous_push: bool,
    /// Connections one client address may hold at once.
    #[serde(default = "default_max_connections_per_client")]
    max_connections_per_client: usize,
    /// A connection that sends no request for this long after it opened is closed.
    first_byte_timeout: Option<String>,
    /// A connection with no request in progress for this long is closed.
    idle_timeout: Option<String>,
    /// Failed logins one client address may make per minute before it is refused.
    #[serde(default = "default_auth_failures_per_minute")]
    auth_failures_per_minute: u32,
}

fn default_max_uploads_per_client() -> usize {
    64
}
fn default_max_connections_per_client() -> usize {
    256
}
fn default_auth_failures_per_minute() -> u32 {
    10
}

fn default_max_uploads() -> usize {
    1024
}

fn default_max_connections() -> usize {
    1024
}
fn default_log_format() -> String {
    "text".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_cache_dir")]
    dir: PathBuf,
    #[serde(default = "default_max_bytes")]
    max_bytes: String,
    #[serde(default = "default_tag_ttl")]
    tag_ttl: String,
    /// Free disk space the cache leaves on its filesystem; a blob that
    /// would eat into it is served uncached.
    #[serde(default = "default_min_free_bytes")]
    min_free_bytes: String,
}

fn default_min_free_bytes() -> String {
    "1GiB".into()
}

fn default_cache_dir() -> PathBuf {
    "data/cache".into()
}
fn default_max_bytes() -> String {
    "20GiB".into()
}
fn default_tag_ttl() -> String {
    "60s".into()
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            dir: default_cache_dir(),
            max_bytes: default_max_bytes(),
            tag_ttl: default_tag_ttl(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: Option<PathBuf>,
    /// How often the policy file is checked for changes.
    reload_interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_audit_path")]
    path: String,
}

fn default_audit_path() -> String {
    "-".into()
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: default_audit_path(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: String,
    #[serde(default)]
    default: bool,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    ca_cert: Option<PathBuf>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
    pub pull_auth: bool,
    pub max_connections: usize,
    pub log_format: LogFormat,
    pub header_timeout: Duration,
    pub upload_timeout: Duration,
    pub max_uploads: usize,
    pub max_uploads_per_client: usize,
    pub allow_anonymous_push: bool,
    pub max_connections_per_client: usize,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub auth_failures_per_minute: u32,
    pub min_free_bytes: u64,
    pub cache_dir: PathBuf,
    pub max_bytes: u64,
    pub tag_ttl: Duration,
    pub policy_file: Option<PathBuf>,
    pub policy_reload_interval: Duration,
    pub audit_path: String,
    pub upstreams: Vec<UpstreamConfig>,
    /// Shared object storage (`[storage] backend = "s3"`); None = local disk only.
    pub storage: Option<S3Config>,
    /// Fleet-wide single flight (`[coordination] redis`); None = per replica.
    pub coordination: Option<CoordinationConfig>,
}

/// How configuration reads environment variables (the process's, or a
/// test's own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A secret read from the environment or a file: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where the shared state lives: an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: url::Url,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub ca_cert: Option<PathBuf>,
    /// Prefix of every key ("" or ending in '/').
    pub prefix: String,
}

/// How replicas share downloads.
#[derive(Debug, Clone)]
pub struct CoordinationConfig {
    pub redis: url::Url,
    /// Where this replica serves its downloads in flight to the others.
    pub internal_listen: SocketAddr,
    /// How the others reach `internal_listen`.
    pub internal_advertise: url::Url,
    pub internal_token: Secret,
    /// How long a download lease lives without renewal.
    pub lease_ttl: Duration,
}

/// One upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: url::Url,
    pub default: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// A blob download that receives nothing for this long is abandoned.
    pub idle_timeout: Duration,
}

fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s).map_err(|e| {
        ConfigError::Invalid(format!(
            "{field} = {s:?} is not a duration ({e}); write e.g. \"60s\" or \"5m\""
        ))
    })
}

/// A duration that must be more than zero.
fn positive_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = duration(field, s)?;
    if d.is_zero() {
        return Err(ConfigError::Invalid(format!(
            "{field} = {s:?} must be more than zero"
        )));
    }
    Ok(d)
}

fn addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{field} = {s:?} is not an address like \"127.0.0.1:5000\""
        ))
    })
}

/// Whether two upstream URLs name the same registry (scheme, host, port, path).
fn same_registry(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

/// Parse a size like `20GiB`, `512MB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size ({e}); write e.g. \"20GiB\""))
}

/// One `[[upstreams]]` entry, checked against the ones before it.
fn parse_upstream(
    u: &RawUpstream,
    earlier: &[UpstreamConfig],
) -> Result<UpstreamConfig, ConfigError> {
    let url = url::Url::parse(&u.url).map_err(|e| {
        ConfigError::Invalid(format!("upstream {:?}: url {:?}: {e}", u.name, u.url))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::Invalid(format!(
            "upstream {:?}: url {:?} must be http:// or https:// with a host",
            u.name, u.url
        )));
    }
    if u.name.is_empty() || u.name.contains('/') || u.name.chars().any(char::is_whitespace) {
        return Err(ConfigError::Invalid(format!(
            "upstream name {:?} must be a host name like \"docker.io\" (no '/')",
            u.name
        )));
    }
    if let Some(twin) = earlier.iter().find(|x| same_registry(&x.url, &url)) {
        return Err(ConfigError::Invalid(format!(
            "upstreams {:?} and {:?} have the same url {:?}: one repository would have two canonical names and a policy rule would govern only one of them; keep one upstream per registry",
            twin.name, u.name, u.url
        )));
    }
    if earlier.iter().any(|x| x.name == u.name) {
        return Err(ConfigError::Invalid(format!(
            "upstream {:?} is listed twice",
            u.name
        )));
    }
    let password = match (&u.password, &u.password_env) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            ConfigError::Invalid(format!(
                "upstream {:?}: password_env {var:?} is not set in the environment",
                u.name
            ))
        })?),
        (None, None) => None,
    };
    if password.is_some() && u.username.is_none() {
        return Err(ConfigError::Invalid(format!(
            "upstream {:?}: a password needs a username",
            u.name
        )));
    }
    Ok(UpstreamConfig {
        name: u.name.clone(),
        url,
        default: u.default,
        username: u.username.clone(),
        password,
        ca_cert: u.ca_cert.clone(),
        connect_timeout: duration(
            "connect_timeout",
            u.connect_timeout.as_deref().unwrap_or("10s"),
        )?,
        idle_timeout: duration("idle_timeout", u.idle_timeout.as_deref().unwrap_or("60s"))?,
    })
}

/// Every `[[upstreams]]` entry: at least one, at most one default.
fn parse_upstreams(raw: &[RawUpstream]) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut upstreams = Vec::new();
    for u in raw {
        let parsed = parse_upstream(u, &upstreams)?;
        upstreams.push(parsed);
    }
    if upstreams.is_empty() {
        return Err(ConfigError::Invalid(
            "no [[upstreams]]: name at least one registry to proxy".into(),
        ));
    }
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        return Err(ConfigError::Invalid(
            "more than one upstream has default = true".into(),
        ));
    }
    Ok(upstreams)
}

/// `tls_cert` and `tls_key`, both or neither.
fn tls_of(s: &RawServer) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid(
            "server.tls_cert and server.tls_key must be set together".into(),
        )),
    }
}

/// `log_format`: text or JSON lines.
fn log_format_of(s: &RawServer) -> Result<LogFormat, ConfigError> {
    match s.log_format.as_str() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(ConfigError::Invalid(format!(
            "server.log_format = {other:?}: use \"text\" or \"json\""
        ))),
    }
}

/// `cache.max_bytes` (more than zero).
fn max_bytes_of(c: &RawCache) -> Result<u64, ConfigError> {
    match parse_size(&c.max_bytes)
        .map_err(|e| ConfigError::Invalid(format!("cache.max_bytes: {e}")))?
    {
        0 => Err(ConfigError::Invalid(format!(
            "cache.max_bytes = {:?} leaves no room to cache anything; give a size like \"20GiB\"",
            c.max_bytes
        ))),
        n => Ok(n),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, &process_env)
    }

    /// [`Config::parse`], reading environment variables through `env`.
    pub fn parse_with_env(text: &str, env: Env) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        let s = &raw.server;
        if s.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections must be > 0".into(),
            ));
        }
        let upstreams = parse_upstreams(&raw.upstreams)?;
        Ok(Config {
            listen: addr("server.listen", &s.listen)?,
            admin_listen: s
                .admin_listen
                .as_deref()
                .map(|a| addr("server.admin_listen", a))
                .transpose()?,
            tls: tls_of(s)?,
            htpasswd: s.htpasswd.clone(),
            pull_auth: s.pull_auth,
            max_connections: s.max_connections,
            log_format: log_format_of(s)?,
            header_timeout: duration(
                "server.header_timeout",
                s.header_timeout.as_deref().unwrap_or("30s"),
            )?,
            upload_timeout: duration(
                "server.upload_timeout",
                s.upload_timeout.as_deref().unwrap_or("10m"),
            )?,
            max_uploads: s.max_uploads.max(1),
            max_uploads_per_client: s.max_uploads_per_client.max(1),
            allow_anonymous_push: s.allow_anonymous_push,
            max_connections_per_client: s.max_connections_per_client.max(1),
            first_byte_timeout: positive_duration(
                "server.first_byte_timeout",
                s.first_byte_timeout.as_deref().unwrap_or("10s"),
            )?,
            idle_timeout: positive_duration(
                "server.idle_timeout",
                s.idle_timeout.as_deref().unwrap_or("90s"),
            )?,
            auth_failures_per_minute: s.auth_failures_per_minute,
            min_free_bytes: parse_size(&raw.cache.min_free_bytes)
                .map_err(|e| ConfigError::Invalid(format!("cache.min_free_bytes: {e}")))?,
            cache_dir: raw.cache.dir.clone(),
            max_bytes: max_bytes_of(&raw.cache)?,
            tag_ttl: positive_duration("cache.tag_ttl", &raw.cache.tag_ttl)?,
            policy_file: raw.policy.file.clone(),
            policy_reload_interval: duration(
                "policy.reload_interval",
                raw.policy.reload_interval.as_deref().unwrap_or("2s"),
            )?,
            audit_path: raw.audit.path.clone(),
            upstreams,
            storage: storage_of(env, &raw.storage)?,
            coordination: coordination_of(env, &raw.coordination)?,
        })
        .and_then(|mut c| {
            if c.coordination.is_some() && c.storage.is_none() {
                return Err(ConfigError::Invalid(
                    "[coordination] needs [storage] backend = \"s3\": the lease holder copies each blob into the shared bucket the others read".into(),
                ));
            }
            if let Some(n) = &raw.storage.local_cache_bytes {
                c.max_bytes = max_bytes_of(&RawCache {
                    max_bytes: n.clone(),
                    ..raw.cache.clone()
                })
                .map_err(|e| {
                    ConfigError::Invalid(
                        e.to_string()
                            .replace("cache.max_bytes", "storage.local_cache_bytes"),
                    )
                })?;
            }
            Ok(c)
        })
    }
}

/// A secret from the environment variable `var`.
fn secret_from_env(env: Env, field: &str, var: &str) -> Result<Secret, ConfigError> {
    match env(var) {
        Some(v) if !v.is_empty() => Ok(Secret(v)),
        _ => Err(ConfigError::Invalid(format!(
            "{field}: the environment variable {var} is not set (or empty); set it, or name a credentials_file"
        ))),
    }
}

/// `aws_access_key_id` and `aws_secret_access_key` from an AWS-style
/// credentials file (the first of each; `[profile]` lines are ignored).
fn credentials_from_file(path: &Path) -> Result<(Secret, Secret), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "storage.credentials_file {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let find = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| Secret(v.trim().to_string()))
            .filter(|s| !s.0.is_empty())
    };
    match (find("aws_access_key_id"), find("aws_secret_access_key")) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => Err(ConfigError::Invalid(format!(
            "storage.credentials_file {}: needs aws_access_key_id = ... and aws_secret_access_key = ... lines",
            path.display()
        ))),
    }
}

fn storage_of(env: Env, s: &RawStorage) -> Result<Option<S3Config>, ConfigError> {
    match s.backend.as_deref().unwrap_or("local") {
        "local" => {
            if s.endpoint.is_some() || s.bucket.is_some() {
                return Err(ConfigError::Invalid(
                    "storage: endpoint and bucket are set but backend is \"local\"; set backend = \"s3\" to use them".into(),
                ));
            }
            return Ok(None);
        }
        "s3" => {}
        other => {
            return Err(ConfigError::Invalid(format!(
                "storage.backend = {other:?}: use \"local\" (the default) or \"s3\""
            )))
        }
    }
    let need = |v: &Option<String>, field: &str| {
        v.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
            ConfigError::Invalid(format!("storage.{field} is required with backend = \"s3\""))
        })
    };
    let endpoint = need(&s.endpoint, "endpoint")?;
    let endpoint = url::Url::parse(&endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "storage.endpoint = {endpoint:?} is not an http(s) URL like \"https://s3.eu-west-1.amazonaws.com\""
            ))
        })?;
    let bucket = need(&s.bucket, "bucket")?;
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(ConfigError::Invalid(format!(
            "storage.bucket = {bucket:?}: bucket names are lowercase letters, digits, '-' and '.'"
        )));
    }
    let (access_key, secret_key) = match &s.credentials_file {
        Some(p) => credentials_from_file(p)?,
        None => (
            secret_from_env(
                env,
                "storage.access_key_env",
                s.access_key_env
                    .as_deref()
                    .unwrap_or("MODELGATE_S3_ACCESS_KEY"),
            )?,
            secret_from_env(
                env,
                "storage.secret_key_env",
                s.secret_key_env
                    .as_deref()
                    .unwrap_or("MODELGATE_S3_SECRET_KEY"),
            )?,
        ),
    };
    let prefix = s.prefix.clone().unwrap_or_default();
    let prefix = match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    Ok(Some(S3Config {
        endpoint,
        bucket,
        region: s.region.clone().unwrap_or_else(|| "us-east-1".into()),
        path_style: s.path_style.unwrap_or(true),
        access_key,
        secret_key,
        ca_cert: s.ca_cert.clone(),
        prefix,
    }))
}

/// `s` with each `${NAME}` replaced by the environment variable NAME (a
/// per-pod address in a shared config file, e.g. `http://${POD_IP}:5001`).
fn expand_env(env: Env, field: &str, s: &str) -> Result<String, ConfigError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{field} = {s:?}: an unclosed ${{ (write ${{NAME}})"
            ))
        })?;
        let name = &after[..end];
        let value = env(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{field} = {s:?}: the environment variable {name} is not set"
            ))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn coordination_of(
    env: Env,
    c: &RawCoordination,
) -> Result<Option<CoordinationConfig>, ConfigError> {
    let Some(redis) = &c.redis else {
        if c.internal_listen.is_some() || c.internal_advertise.is_some() {
            return Err(ConfigError::Invalid(
                "coordination: internal_listen is set but redis is not; set redis = \"redis://...\" for fleet-wide single flight".into(),
            ));
        }
        return Ok(None);
    };
    let redis = url::Url::parse(redis)
        .ok()
        .filter(|u| matches!(u.scheme(), "redis" | "rediss"))
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "coordination.redis = {redis:?} is not a URL like \"redis://127.0.0.1:6379\""
            ))
        })?;
    let listen = c.internal_listen.as_deref().ok_or_else(|| {
        ConfigError::Invalid(
            "coordination.internal_listen is required with redis (where this replica serves its downloads to the others)".into(),
        )
    })?;
    let internal_listen = addr("coordination.internal_listen", listen)?;
    let advertise = match &c.internal_advertise {
        Some(a) => expand_env(env, "coordination.internal_advertise", a)?,
        None if !internal_listen.ip().is_unspecified() => format!("http://{internal_listen}"),
        None => {
            return Err(ConfigError::Invalid(format!(
                "coordination.internal_advertise is required when internal_listen = {listen:?} listens on every address: name the address the other replicas reach"
            )))
        }
    };
    let internal_advertise = url::Url::parse(&advertise)
        .ok()
        .filter(|u| u.scheme() == "http" && u.host_str().is_some())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "coordination.internal_advertise = {advertise:?} is not a URL like \"http://10.0.0.5:5001\""
            ))
        })?;
    let internal_token = secret_from_env(
        env,
        "coordination.internal_token_env",
        c.internal_token_env
            .as_deref()
            .unwrap_or("MODELGATE_INTERNAL_TOKEN"),
    )?;
    if internal_token.0.len() < 16 {
        return Err(ConfigError::Invalid(
            "coordination.internal_token_env: the token is shorter than 16 characters; use a long random one (openssl rand -hex 32)".into(),
        ));
    }
    Ok(Some(CoordinationConfig {
        redis,
        internal_listen,
        internal_advertise,
        internal_token,
        lease_ttl: positive_duration(
            "coordination.lease_ttl",
            c.lease_ttl.as_deref().unwrap_or("15s"),
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:5000"
admin_listen = "127.0.0.1:9095"
[cache]
dir = "data/cache"
max_bytes = "20GiB"
tag_ttl = "60s"
[[upstreams]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true
"#;

    #[test]
    fn parses_design_example() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.max_bytes, 20 * 1024 * 1024 * 1024);
        assert_eq!(c.tag_ttl, Duration::from_secs(60));
        assert_eq!(c.upstreams[0].name, "docker.io");
        assert!(c.upstreams[0].default);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        let e = Config::parse(&GOOD.replace("tag_ttl", "tag_tll")).unwrap_err();
        assert!(e.to_string().contains("tag_tll"), "{e}");
        let e = Config::parse(&GOOD.replace("\"60s\"", "\"soon\"")).unwrap_err();
        assert!(e.to_string().contains("tag_ttl"), "{e}");
        let e = Config::parse(&GOOD.replace("20GiB", "lots")).unwrap_err();
        assert!(e.to_string().contains("max_bytes"), "{e}");
        let e = Config::parse(&GOOD.replace("https://registry-1", "ftp://registry-1")).unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
    }

    #[test]
    fn zero_sizes_and_durations_and_twin_upstreams_are_refused() {
        let e = Config::parse(&GOOD.replace("\"20GiB\"", "\"0\"")).unwrap_err();
        assert!(e.to_string().contains("cache.max_bytes"), "{e}");
        let e = Config::parse(&GOOD.replace("\"60s\"", "\"0s\"")).unwrap_err();
        assert!(e.to_string().contains("cache.tag_ttl"), "{e}");
        let twin = format!(
            "{GOOD}[[upstreams]]\nname = \"hub\"\nurl = \"https://REGISTRY-1.docker.io:443/\"\n"
        );
        let e = Config::parse(&twin).unwrap_err();
        assert!(e.to_string().contains("same url"), "{e}");
        let c = Config::parse(GOOD).unwrap();
        assert!(!c.allow_anonymous_push, "read-only by default");
    }

    #[test]
    fn shared_storage_and_coordination() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n",
        )
        .unwrap();
        let s3 = format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"mg\"\ncredentials_file = \"{}\"\nprefix = \"/fleet-a/\"\nlocal_cache_bytes = \"1GiB\"\n",
            creds.display()
        );
        let c = Config::parse(&format!("{GOOD}{s3}")).unwrap();
        let st = c.storage.as_ref().unwrap();
        assert_eq!(
            (st.bucket.as_str(), st.region.as_str(), st.prefix.as_str()),
            ("mg", "us-east-1", "fleet-a/")
        );
        assert!(st.path_style);
        assert_eq!(st.access_key, Secret("AK".into()));
        assert_eq!(
            c.max_bytes,
            1 << 30,
            "local_cache_bytes bounds the local cache"
        );
        // Secrets never print.
        assert!(!format!("{c:?}").contains("SK"));
        assert!(c.coordination.is_none());
        // Coordination: the token comes from the environment (PATH stands in).
        let co = "[coordination]\nredis = \"redis://127.0.0.1:6379\"\ninternal_listen = \"127.0.0.1:5001\"\ninternal_token_env = \"PATH\"\n";
        let c = Config::parse(&format!("{GOOD}{s3}{co}")).unwrap();
        let k = c.coordination.unwrap();
        assert_eq!(k.internal_advertise.as_str(), "http://127.0.0.1:5001/");
        assert_eq!(k.lease_ttl, Duration::from_secs(15));
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            expand_env(&process_env, "f", "a${PATH}b").unwrap(),
            format!("a{path}b")
        );
        assert!(expand_env(&process_env, "f", "${MODELGATE_TEST_UNSET_VAR}")
            .unwrap_err()
            .to_string()
            .contains("MODELGATE_TEST_UNSET_VAR is not set"));
        assert!(expand_env(&process_env, "f", "${PATH").is_err());
        let e = Config::parse(&format!("{GOOD}{co}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[coordination] needs [storage]"), "{e}");
        for (bad, says) in [
            ("[storage]\nbackend = \"gcs\"\n", "use \"local\" (the default) or \"s3\""),
            ("[storage]\nbackend = \"s3\"\n", "storage.endpoint is required"),
            ("[storage]\nendpoint = \"http://x\"\n", "set backend = \"s3\""),
            ("[storage]\nbackend = \"s3\"\nendpoint = \"ftp://x\"\nbucket = \"b\"\n", "is not an http(s) URL"),
            ("[storage]\nbackend = \"s3\"\nendpoint = \"http://x\"\nbucket = \"B_b\"\n", "bucket names are lowercase"),
            ("[storage]\nbackend = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\naccess_key_env = \"MODELGATE_TEST_UNSET_KEY\"\n", "MODELGATE_TEST_UNSET_KEY is not set"),
            ("[coordination]\ninternal_listen = \"127.0.0.1:5001\"\n", "redis is not"),
            ("[coordination]\nredis = \"http://x\"\ninternal_listen = \"127.0.0.1:5001\"\n", "is not a URL like \"redis://"),
            ("[coordination]\nredis = \"redis://x\"\n", "internal_listen is required"),
            ("[coordination]\nredis = \"redis://x\"\ninternal_listen = \"0.0.0.0:5001\"\n", "internal_advertise is required"),
        ] {
            let e = Config::parse(&format!("{GOOD}{bad}")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// The Kubernetes example's config is one modelgate accepts.
    #[test]
    fn the_kubernetes_example_config_parses() {
        let yaml = include_str!("../deploy/kubernetes/modelgate.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.contains("modelgate.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let env = |name: &str| -> Option<String> {
            match name {
                "POD_IP" => Some("10.1.2.3".into()),
                "MODELGATE_S3_ACCESS_KEY" | "MODELGATE_S3_SECRET_KEY" => Some("k".into()),
                "MODELGATE_INTERNAL_TOKEN" => Some("0123456789abcdef0123".into()),
                _ => None,
            }
        };
        let c = Config::parse_with_env(&toml, &env).unwrap();
        assert_eq!(
            c.coordination.unwrap().internal_advertise.as_str(),
            "http://10.1.2.3:5001/"
        );
        assert_eq!(c.storage.unwrap().bucket, "modelgate");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert!(parse_size("-1").is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn shipped() -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/modelgate.toml"),
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Damaged copies of the shipped config, sizes and durations:
        /// parsed or refused with a message, never a panic.
        #[test]
        fn damaged_configs_parse_or_refuse(bytes in crate::proptests::mutated(shipped().into_bytes())) {
            if let Err(e) = Config::parse(&String::from_utf8_lossy(&bytes)) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn sizes_parse_or_refuse(s in "[0-9. ]{0,12}[a-zA-Z]{0,4}|.{0,16}") {
            let _ = parse_size(&s);
        }
    }
}
