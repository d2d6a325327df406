//! Reading a policy file: strict TOML (unknown fields and bad values are
//! errors naming the line), then one small step per part — default, keys,
//! each rule's globs, mode, signatures, constraints and tags.

use super::facts::{Quantity, FACT_NAMES};
use super::model::{
    glob, Constraint, FieldMatch, GithubPin, KeylessSigner, Mode, NotationIdentity, NotationSigner,
    Policy, PolicyError, Rule, SignatureRule, TagRule, KEYLESS_SIGNER,
};
use super::model::{LayerRule, Regression};
use crate::oci::kind::KIND_NAMES;
use crate::trust::notation::{load_trust_store, Level, TrustStore};
use crate::trust::sigstore::TrustedRoot;
use crate::trust::PublicKey;
use globset::GlobMatcher;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    keys: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    trust: BTreeMap<String, Spanned<RawTrust>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    trusted_root: Option<String>,
    notation_certs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    signatures: Option<Spanned<RawSignatures>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<RawConstraint>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<RawConstraint>>,
    #[serde(default)]
    tags: Option<RawTags>,
    #[serde(default)]
    kinds: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    model: BTreeMap<String, Spanned<RawConstraint>>,
    #[serde(default)]
    config: BTreeMap<String, BTreeMap<String, Spanned<RawConstraint>>>,
    #[serde(default)]
    layers: Option<Spanned<RawLayers>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayers {
    #[serde(default)]
    allow_media_types: Vec<String>,
    #[serde(default)]
    deny_media_types: Vec<String>,
    #[serde(default)]
    deny_paths: Vec<String>,
    #[serde(default)]
    require_paths: bool,
    max_layer_bytes: Option<NumOrText>,
    max_total_bytes: Option<NumOrText>,
    max_layers: Option<usize>,
}

/// A bound written as a number or as text with a unit (`"70B"`, `"40GiB"`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum NumOrText {
    Num(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    keyless: Vec<Spanned<RawKeyless>>,
    #[serde(default)]
    notation: Vec<Spanned<RawNotation>>,
    #[serde(default = "one")]
    min: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    trust: String,
    issuer: Option<String>,
    issuer_regex: Option<String>,
    subject: Option<String>,
    subject_regex: Option<String>,
    #[serde(default)]
    github: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotation {
    trust: String,
    identities: Vec<String>,
    #[serde(default)]
    level: Option<String>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    regex: Option<String>,
    semver: Option<bool>,
    rfc3339: Option<bool>,
    min: Option<NumOrText>,
    max: Option<NumOrText>,
    one_of: Option<Vec<String>>,
    each_one_of: Option<Vec<String>>,
    optional: Option<bool>,
    regression: Option<RawRegression>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegression {
    max_drop: Option<f64>,
    max_rise: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    immutable: bool,
    #[serde(default)]
    channels: Option<Spanned<Vec<String>>>,
}

/// The line of byte `offset` in `text` (1-based).
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Where errors point: the file and its text.
struct Source<'a> {
    text: &'a str,
    name: &'a str,
}

impl Source<'_> {
    fn err(&self, message: String) -> PolicyError {
        PolicyError::Invalid {
            path: self.name.to_string(),
            message,
        }
    }

    fn at(&self, span: Range<usize>, m: String) -> PolicyError {
        self.err(format!("line {}: {m}", line_of(self.text, span.start)))
    }
}

fn parse_default(src: &Source<'_>, d: &Option<Spanned<String>>) -> Result<bool, PolicyError> {
    match d.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("allow", _)) => Ok(true),
        Some(("deny", _)) => Ok(false),
        Some((other, span)) => Err(src.at(
            span,
            format!("default = {other:?}: use \"allow\" or \"deny\""),
        )),
    }
}

fn parse_keys(
    src: &Source<'_>,
    base: &Path,
    raw: &BTreeMap<String, Spanned<String>>,
) -> Result<BTreeMap<String, PublicKey>, PolicyError> {
    let mut keys = BTreeMap::new();
    for (kname, v) in raw {
        if kname.starts_with(KEYLESS_SIGNER) {
            return Err(src.at(
                v.span(),
                format!("key {kname:?}: names starting with {KEYLESS_SIGNER:?} are kept for keyless signers"),
            ));
        }
        let s = v.get_ref();
        let pem = if s.trim_start().starts_with("-----BEGIN") {
            s.clone()
        } else {
            let p = base.join(s);
            std::fs::read_to_string(&p).map_err(|e| {
                src.at(
                    v.span(),
                    format!("key {kname:?}: cannot read {}: {e}", p.display()),
                )
            })?
        };
        let k = PublicKey::from_pem(&pem)
            .map_err(|e| src.at(v.span(), format!("key {kname:?}: {e}")))?;
        keys.insert(kname.clone(), k);
    }
    Ok(keys)
}

fn parse_globs(src: &Source<'_>, r: &RawRule) -> Result<Vec<globset::GlobMatcher>, PolicyError> {
    let mut matchers = Vec::new();
    for g in &r.repositories {
        if g.get_ref().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(src.at(
                g.span(),
                format!(
                    "rule {:?}: repository glob {:?} has uppercase letters and can never match: canonical names are lowercase",
                    r.name,
                    g.get_ref()
                ),
            ));
        }
        matchers.push(glob(g.get_ref()).map_err(|e| {
            src.at(
                g.span(),
                format!("rule {:?}: repository glob {:?}: {e}", r.name, g.get_ref()),
            )
        })?);
    }
    Ok(matchers)
}

fn parse_mode(src: &Source<'_>, r: &RawRule) -> Result<Mode, PolicyError> {
    match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Ok(Mode::Enforce),
        Some(("audit", _)) => Ok(Mode::Audit),
        Some((other, s)) => Err(src.at(
            s,
            format!(
                "rule {:?}: mode = {other:?}: use \"enforce\" or \"audit\"",
                r.name
            ),
        )),
    }
}

fn parse_signatures(
    src: &Source<'_>,
    r: &RawRule,
    keys: &BTreeMap<String, PublicKey>,
    trust: &TrustMaterial,
) -> Result<Option<SignatureRule>, PolicyError> {
    let Some(s) = &r.signatures else {
        return Ok(None);
    };
    let (sp, s) = (s.span(), s.get_ref());
    if s.keys.is_empty() && s.keyless.is_empty() && s.notation.is_empty() {
        return Err(src.at(
            sp,
            format!(
                "rule {:?}: signatures lists no keys, no keyless and no notation signers",
                r.name
            ),
        ));
    }
    if let Some(k) = s.keys.iter().find(|k| !keys.contains_key(*k)) {
        return Err(src.at(
            sp,
            format!(
                "rule {:?}: signatures.keys names {k:?}, which is not in [keys]",
                r.name
            ),
        ));
    }
    // Several keyless or Notation identities may match one entry, so only
    // keys alone bound `min`.
    let keys_only = s.keyless.is_empty() && s.notation.is_empty();
    if s.min == 0 || (keys_only && s.min > s.keys.len()) {
        return Err(src.at(
            sp,
            format!(
                "rule {:?}: signatures.min = {} must be between 1 and the {} keys listed",
                r.name,
                s.min,
                s.keys.len()
            ),
        ));
    }
    let keyless = s
        .keyless
        .iter()
        .map(|k| parse_keyless(src, &r.name, k, trust))
        .collect::<Result<_, _>>()?;
    let notation = s
        .notation
        .iter()
        .map(|n| parse_notation(src, &r.name, n, trust))
        .collect::<Result<_, _>>()?;
    Ok(Some(SignatureRule {
        keys: s.keys.clone(),
        keyless,
        notation,
        min: s.min,
    }))
}

fn parse_keyless(
    src: &Source<'_>,
    rule: &str,
    raw: &Spanned<RawKeyless>,
    trust: &TrustMaterial,
) -> Result<KeylessSigner, PolicyError> {
    let (span, k) = (raw.span(), raw.get_ref());
    let err = |m: String| src.at(span.clone(), format!("rule {rule:?}: keyless signer: {m}"));
    if let Some(why) = trust.misnamed(&k.trust, TrustKind::Sigstore) {
        return Err(err(why));
    }
    let field = |name: &str, exact: &Option<String>, regex: &Option<String>| {
        match (exact, regex) {
            (Some(e), None) if !e.is_empty() => Ok(FieldMatch::Exact(e.clone())),
            (None, Some(r)) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(FieldMatch::Regex)
                .map_err(|e| err(format!("{name}_regex: {e}"))),
            _ => Err(err(format!(
                "set exactly one of {name} and {name}_regex (a keyless signer must name whom it trusts)"
            ))),
        }
    };
    let github = k
        .github
        .iter()
        .map(|(f, v)| match GithubPin::new(f, v) {
            Some(pin) if !v.is_empty() => Ok(pin),
            Some(_) => Err(err(format!("github.{f} is empty"))),
            None => Err(err(format!(
                "github.{f} is not a pin: use repository, trigger, ref, sha or runner_environment"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(KeylessSigner {
        line: line_of(src.text, span.start),
        trust: k.trust.clone(),
        issuer: field("issuer", &k.issuer, &k.issuer_regex)?,
        subject: field("subject", &k.subject, &k.subject_regex)?,
        github,
    })
}

/// The trust material a policy names: Sigstore trusted roots and Notation
/// trust stores, each by its `[trust.NAME]`.
#[derive(Default)]
struct TrustMaterial {
    sigstore: BTreeMap<String, Arc<TrustedRoot>>,
    notation: BTreeMap<String, Arc<TrustStore>>,
}

/// The two kinds of trust material.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrustKind {
    Sigstore,
    Notation,
}

impl TrustKind {
    fn describe(self) -> &'static str {
        match self {
            TrustKind::Sigstore => "a Sigstore trusted_root",
            TrustKind::Notation => "a Notation trust store (notation_certs)",
        }
    }
}

impl TrustMaterial {
    /// Why `name` is not trust material of `kind`, if it is not.
    fn misnamed(&self, name: &str, kind: TrustKind) -> Option<String> {
        let found = match (
            self.sigstore.contains_key(name),
            self.notation.contains_key(name),
        ) {
            (true, _) => TrustKind::Sigstore,
            (_, true) => TrustKind::Notation,
            _ => return Some(format!("trust = {name:?} is not a [trust.NAME] table")),
        };
        (found != kind).then(|| {
            format!(
                "trust = {name:?} is {}, not {}",
                found.describe(),
                kind.describe()
            )
        })
    }
}

fn parse_trust(
    src: &Source<'_>,
    base: &Path,
    raw: &BTreeMap<String, Spanned<RawTrust>>,
) -> Result<TrustMaterial, PolicyError> {
    let mut out = TrustMaterial::default();
    for (name, t) in raw {
        let at = |m: String| src.at(t.span(), format!("trust {name:?}: {m}"));
        match (&t.get_ref().trusted_root, &t.get_ref().notation_certs) {
            (Some(file), None) => {
                let p = base.join(file);
                let bytes = std::fs::read(&p)
                    .map_err(|e| at(format!("cannot read {}: {e}", p.display())))?;
                let root =
                    TrustedRoot::parse(&bytes).map_err(|e| at(format!("{}: {e}", p.display())))?;
                if root.certificate_authorities.is_empty()
                    || root.tlogs.is_empty()
                    || root.ctlogs.is_empty()
                {
                    return Err(at(format!(
                        "{} needs at least one certificate authority, transparency log and CT log to verify keyless signatures",
                        p.display()
                    )));
                }
                out.sigstore.insert(name.clone(), Arc::new(root));
            }
            (None, Some(files)) => {
                if files.is_empty() {
                    return Err(at("notation_certs is empty".into()));
                }
                let paths: Vec<_> = files.iter().map(|f| base.join(f)).collect();
                let store = load_trust_store(name, &paths).map_err(at)?;
                out.notation.insert(name.clone(), Arc::new(store));
            }
            _ => {
                return Err(at(
                    "set exactly one of trusted_root (a Sigstore trusted root) and notation_certs (Notation CA certificates)".into(),
                ))
            }
        }
    }
    Ok(out)
}

fn parse_notation(
    src: &Source<'_>,
    rule: &str,
    raw: &Spanned<RawNotation>,
    trust: &TrustMaterial,
) -> Result<NotationSigner, PolicyError> {
    let (span, n) = (raw.span(), raw.get_ref());
    let err = |m: String| src.at(span.clone(), format!("rule {rule:?}: notation signer: {m}"));
    if let Some(why) = trust.misnamed(&n.trust, TrustKind::Notation) {
        return Err(err(why));
    }
    let level = match n.level.as_deref() {
        None => Level::Strict,
        Some(l) => Level::parse(l).ok_or_else(|| {
            err(format!(
                "level = {l:?}: use \"strict\", \"permissive\" or \"audit\""
            ))
        })?,
    };
    if n.identities.is_empty() {
        return Err(err(
            "identities is empty: list x509.subject identities, or \"*\" for any certificate of the trust store".into(),
        ));
    }
    let identities = n
        .identities
        .iter()
        .map(|i| NotationIdentity::parse(i).map_err(|m| err(format!("identity {i:?}: {m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if identities.len() > 1 && identities.contains(&NotationIdentity::Any) {
        return Err(err("\"*\" cannot be combined with other identities".into()));
    }
    Ok(NotationSigner {
        line: line_of(src.text, span.start),
        trust: n.trust.clone(),
        identities,
        level,
    })
}

fn parse_constraint(
    src: &Source<'_>,
    what: &str,
    rule: &str,
    k: &str,
    c: &Spanned<RawConstraint>,
    quantity: Option<Quantity>,
) -> Result<Constraint, PolicyError> {
    let (sp, c) = (c.span(), c.get_ref());
    let bad = |m: String| src.at(sp.clone(), format!("rule {rule:?}: {what} {k:?}: {m}"));
    let regex = c
        .regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| bad(format!("regex: {e}")))?;
    let bound = |which: &str, v: &Option<NumOrText>| -> Result<Option<f64>, PolicyError> {
        let n = match (v, quantity) {
            (None, _) => return Ok(None),
            (Some(NumOrText::Num(n)), _) => *n,
            (Some(NumOrText::Text(t)), Some(q)) => q.parse(t).ok_or_else(|| {
                bad(format!(
                    "{which} = {t:?} is not a quantity (e.g. \"70B\", \"361.82 M\")"
                ))
            })?,
            (Some(NumOrText::Text(t)), None) => {
                return Err(bad(format!(
                    "{which} = {t:?}: {what} values are plain numbers"
                )))
            }
        };
        match n.is_finite() {
            true => Ok(Some(n)),
            false => Err(bad(format!("{which} must be a finite number"))),
        }
    };
    let (min, max) = (bound("min", &c.min)?, bound("max", &c.max)?);
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            return Err(bad(format!("min {a} is above max {b}")));
        }
    }
    for (which, list) in [("one_of", &c.one_of), ("each_one_of", &c.each_one_of)] {
        if list.as_ref().is_some_and(|v| v.is_empty()) {
            return Err(bad(format!("{which} is empty")));
        }
    }
    let regression = match &c.regression {
        None => None,
        Some(r) => match (r.max_drop, r.max_rise) {
            (Some(m), None) if m.is_finite() && m >= 0.0 => Some(Regression::MaxDrop(m)),
            (None, Some(m)) if m.is_finite() && m >= 0.0 => Some(Regression::MaxRise(m)),
            _ => {
                return Err(bad(
                    "regression needs exactly one of max_drop (higher is better) and max_rise (lower is better), a number >= 0".into(),
                ))
            }
        },
    };
    Ok(Constraint {
        regression,
        regex,
        semver: c.semver.unwrap_or(false),
        rfc3339: c.rfc3339.unwrap_or(false),
        min,
        max,
        one_of: c.one_of.clone(),
        each_one_of: c.each_one_of.clone(),
        optional: c.optional.unwrap_or(false),
        quantity,
    })
}

fn parse_constraints(
    src: &Source<'_>,
    what: &str,
    r: &RawRule,
    m: &BTreeMap<String, Spanned<RawConstraint>>,
) -> Result<Vec<(String, Constraint)>, PolicyError> {
    m.iter()
        .map(|(k, c)| Ok((k.clone(), parse_constraint(src, what, &r.name, k, c, None)?)))
        .collect()
}

/// `kinds`, `[rules.model]`, `[rules.config.<kind>]` and `[rules.layers]`.
type ModelParts = (
    Option<Vec<String>>,
    Vec<(String, Constraint)>,
    BTreeMap<String, Vec<(String, Constraint)>>,
    Option<LayerRule>,
);

/// `kinds = [...]`: kind names, or `artifact:<artifactType>`.
fn parse_kinds(src: &Source<'_>, r: &RawRule) -> Result<Option<Vec<String>>, PolicyError> {
    let rule = &r.name;
    let kinds = match &r.kinds {
        None => None,
        Some(k) => {
            let bad = |m: String| src.at(k.span(), format!("rule {rule:?}: kinds: {m}"));
            if k.get_ref().is_empty() {
                return Err(bad(
                    "empty: it would admit nothing (leave kinds out to admit every kind)".into(),
                ));
            }
            for name in k.get_ref() {
                let known = KIND_NAMES.contains(&name.as_str())
                    || name
                        .strip_prefix("artifact:")
                        .is_some_and(|t| !t.is_empty());
                if !known {
                    return Err(bad(format!(
                        "{name:?} is not a kind: use {} or artifact:<artifactType>",
                        KIND_NAMES.join(", ")
                    )));
                }
            }
            Some(k.get_ref().clone())
        }
    };
    Ok(kinds)
}

/// `[rules.model]`: constraints on normalized facts (units by fact).
fn parse_model_facts(
    src: &Source<'_>,
    r: &RawRule,
) -> Result<Vec<(String, Constraint)>, PolicyError> {
    let rule = &r.name;
    let model = r
        .model
        .iter()
        .map(|(fact, c)| {
            if !FACT_NAMES.contains(&fact.as_str()) {
                return Err(src.at(
                    c.span(),
                    format!(
                        "rule {rule:?}: model fact {fact:?} is not one of {}",
                        FACT_NAMES.join(", ")
                    ),
                ));
            }
            let c = parse_constraint(src, "model fact", rule, fact, c, Quantity::of_fact(fact))?;
            Ok((fact.clone(), c))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(model)
}

/// `[rules.config.<kind>]`: JSON pointers into one kind's config.
fn parse_config_pointers(
    src: &Source<'_>,
    r: &RawRule,
) -> Result<BTreeMap<String, Vec<(String, Constraint)>>, PolicyError> {
    let rule = &r.name;
    let mut config = BTreeMap::new();
    for (kind, pointers) in &r.config {
        let first = pointers.values().next().map(Spanned::span).unwrap_or(0..0);
        if !KIND_NAMES.contains(&kind.as_str()) {
            return Err(src.at(
                first,
                format!("rule {rule:?}: [rules.config.{kind}]: {kind:?} is not a kind"),
            ));
        }
        let mut list = Vec::new();
        for (ptr, c) in pointers {
            if !ptr.starts_with('/') {
                return Err(src.at(
                    c.span(),
                    format!("rule {rule:?}: config pointer {ptr:?} must start with '/'"),
                ));
            }
            let c = parse_constraint(src, "config", rule, ptr, c, Some(Quantity::Count))?;
            list.push((ptr.clone(), c));
        }
        config.insert(kind.clone(), list);
    }
    Ok(config)
}

/// `[rules.layers]`: media-type and path globs, size and count limits.
fn parse_layer_rule(src: &Source<'_>, r: &RawRule) -> Result<Option<LayerRule>, PolicyError> {
    let rule = &r.name;
    let layers = match &r.layers {
        None => None,
        Some(l) => {
            let bad = |m: String| src.at(l.span(), format!("rule {rule:?}: layers: {m}"));
            let l = l.get_ref();
            let globs =
                |field: &str,
                 list: &[String],
                 glob_of: fn(&str) -> Result<GlobMatcher, globset::Error>| {
                    list.iter()
                        .map(|g| {
                            glob_of(g)
                                .map(|m| (g.clone(), m))
                                .map_err(|e| bad(format!("{field} {g:?}: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
            let bytes = |field: &str, v: &Option<NumOrText>| -> Result<Option<u64>, PolicyError> {
                let n = match v {
                    None => return Ok(None),
                    Some(NumOrText::Num(n)) => Some(*n),
                    Some(NumOrText::Text(t)) => Quantity::Bytes.parse(t),
                };
                match n {
                    Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n as u64)),
                    _ => Err(bad(format!("{field} is not a size (e.g. \"40GiB\")"))),
                }
            };
            Some(LayerRule {
                allow_media_types: globs("allow_media_types", &l.allow_media_types, any_glob)?,
                deny_media_types: globs("deny_media_types", &l.deny_media_types, any_glob)?,
                deny_paths: globs("deny_paths", &l.deny_paths, any_glob)?,
                require_paths: l.require_paths,
                max_layer_bytes: bytes("max_layer_bytes", &l.max_layer_bytes)?,
                max_total_bytes: bytes("max_total_bytes", &l.max_total_bytes)?,
                max_layers: l.max_layers,
            })
        }
    };
    Ok(layers)
}

fn parse_model_parts(src: &Source<'_>, r: &RawRule) -> Result<ModelParts, PolicyError> {
    Ok((
        parse_kinds(src, r)?,
        parse_model_facts(src, r)?,
        parse_config_pointers(src, r)?,
        parse_layer_rule(src, r)?,
    ))
}

/// A glob whose `*` crosses `/` (media types, file paths).
fn any_glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(globset::Glob::new(pattern)?.compile_matcher())
}

fn parse_tags(src: &Source<'_>, r: &RawRule) -> Result<Option<TagRule>, PolicyError> {
    let Some(t) = &r.tags else {
        return Ok(None);
    };
    let pattern = t
        .pattern
        .as_ref()
        .map(|p| {
            regex::Regex::new(p.get_ref())
                .map_err(|e| src.at(p.span(), format!("rule {:?}: tags.pattern: {e}", r.name)))
        })
        .transpose()?;
    let channels = t
        .channels
        .as_ref()
        .map(|c| c.get_ref().clone())
        .unwrap_or_default();
    for c in &channels {
        let valid = matches!(
            crate::oci::Reference::parse(c),
            Ok(crate::oci::Reference::Tag(_))
        );
        if !valid || semver::Version::parse(c.trim_start_matches('v')).is_ok() {
            return Err(src.at(
                t.channels.as_ref().map(Spanned::span).unwrap_or(0..0),
                format!(
                    "rule {:?}: channel {c:?} must be a tag that is not a release version (e.g. \"prod\")",
                    r.name
                ),
            ));
        }
    }
    Ok(Some(TagRule {
        pattern,
        immutable: t.immutable,
        channels,
    }))
}

fn parse_rule(
    src: &Source<'_>,
    raw: &Spanned<RawRule>,
    keys: &BTreeMap<String, PublicKey>,
    trust: &TrustMaterial,
    earlier: &[Rule],
) -> Result<Rule, PolicyError> {
    let (span, r) = (raw.span(), raw.get_ref());
    let rl = |m: &str| src.at(span.clone(), format!("rule {:?}: {m}", r.name));
    if r.name.trim().is_empty() {
        return Err(src.at(span.clone(), "a rule needs a non-empty name".into()));
    }
    if earlier.iter().any(|x| x.name == r.name) {
        return Err(rl("two rules have this name"));
    }
    if r.repositories.is_empty() {
        return Err(rl("repositories is empty: it would match nothing"));
    }
    let (kinds, model, config, layers) = parse_model_parts(src, r)?;
    Ok(Rule {
        name: r.name.clone(),
        line: line_of(src.text, span.start),
        repositories: r.repositories.iter().map(|g| g.get_ref().clone()).collect(),
        repository_lines: r
            .repositories
            .iter()
            .map(|g| line_of(src.text, g.span().start))
            .collect(),
        matchers: parse_globs(src, r)?,
        mode: parse_mode(src, r)?,
        signatures: parse_signatures(src, r, keys, trust)?,
        labels: parse_constraints(src, "label", r, &r.labels)?,
        annotations: parse_constraints(src, "annotation", r, &r.annotations)?,
        tags: parse_tags(src, r)?,
        kinds,
        model,
        config,
        layers,
    })
}

impl Policy {
    /// Parse `text`; key paths are relative to `base` (the policy file's folder).
    pub fn parse(text: &str, base: &Path, name: &str) -> Result<Policy, PolicyError> {
        let src = Source { text, name };
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| src.err(e.to_string().trim_end().to_string()))?;
        let default_allow = parse_default(&src, &raw.default)?;
        let keys = parse_keys(&src, base, &raw.keys)?;
        let trust = parse_trust(&src, base, &raw.trust)?;
        let mut rules: Vec<Rule> = Vec::new();
        for r in &raw.rules {
            let rule = parse_rule(&src, r, &keys, &trust, &rules)?;
            rules.push(rule);
        }
        let mut sources: Vec<_> = raw
            .keys
            .values()
            .map(Spanned::get_ref)
            .filter(|v| !v.trim_start().starts_with("-----BEGIN"))
            .map(|v| base.join(v))
            .collect();
        for t in raw.trust.values().map(Spanned::get_ref) {
            sources.extend(t.trusted_root.iter().map(|f| base.join(f)));
            sources.extend(t.notation_certs.iter().flatten().map(|f| base.join(f)));
        }
        Ok(Policy {
            default_allow,
            keys,
            trust: trust.sigstore,
            notation: trust.notation,
            rules,
            sources,
        })
    }

    /// Read and parse the file at `path`; returns the policy and its text.
    pub fn load(path: &Path) -> Result<(Policy, String), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok((
            Policy::parse(&text, base, &path.display().to_string())?,
            text,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyless")
    }

    fn parse(body: &str) -> Result<Policy, String> {
        let text = format!(
            "[trust.good]\ntrusted_root = \"public-good-trusted_root.json\"\n[[rules]]\nname = \"m\"\nrepositories = [\"a/**\"]\n[rules.signatures]\n{body}"
        );
        Policy::parse(&text, &root_dir(), "p.toml").map_err(|e| e.to_string())
    }

    const GITHUB: &str = "issuer = \"https://token.actions.githubusercontent.com\"\n";

    #[test]
    fn keyless_signers_are_read_with_anchored_regexes() {
        let p = parse(&format!(
            "min = 2\n[[rules.signatures.keyless]]\ntrust = \"good\"\n{GITHUB}subject_regex = 'https://github\\.com/acme/.*'\n"
        ))
        .unwrap();
        let sig = p.rules[0].signatures.as_ref().unwrap();
        assert_eq!(sig.min, 2, "several identities may match one entry");
        let k = &sig.keyless[0];
        assert!(k.subject.matches("https://github.com/acme/x"));
        assert!(!k.subject.matches("evil https://github.com/acme/x"));
        assert!(k
            .issuer
            .matches("https://token.actions.githubusercontent.com"));
        assert!(!k
            .issuer
            .matches("https://token.actions.githubusercontent.com.evil"));
        let d = p.describe();
        assert!(d.contains("trust good: Sigstore root"), "{d}");
        assert!(d.contains("keyless /^(?:https://github"), "{d}");
    }

    #[test]
    fn keyless_mistakes_name_the_line_and_the_fix() {
        let entry = |fields: &str| format!("[[rules.signatures.keyless]]\n{fields}");
        for (body, needle) in [
            (
                entry(&format!("trust = \"nope\"\n{GITHUB}subject = \"s\"\n")),
                "not a [trust.NAME]",
            ),
            (
                entry(&format!("trust = \"good\"\n{GITHUB}")),
                "exactly one of subject and subject_regex",
            ),
            (
                entry(&format!(
                    "trust = \"good\"\n{GITHUB}subject = \"s\"\nsubject_regex = \"s\"\n"
                )),
                "exactly one of subject",
            ),
            (
                entry("trust = \"good\"\nsubject = \"s\"\n"),
                "exactly one of issuer",
            ),
            (
                entry(&format!("trust = \"good\"\n{GITHUB}subject_regex = '('\n")),
                "subject_regex",
            ),
            (
                entry(&format!("trust = \"good\"\n{GITHUB}subject = \"\"\n")),
                "exactly one of subject",
            ),
            (
                entry(&format!("trust = \"good\"\n{GITHUB}subjekt = \"s\"\n")),
                "subjekt",
            ),
            (
                String::from("min = 1\n"),
                "no keys, no keyless and no notation signers",
            ),
        ] {
            let e = parse(&body).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
            assert!(e.contains("line "), "{e}");
        }
    }

    fn notation_policy(entry: &str) -> Result<Policy, String> {
        let store = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/notation/jws-es256-valid/truststore");
        let text = format!(
            "[trust.good]\ntrusted_root = \"public-good-trusted_root.json\"\n[trust.acme]\nnotation_certs = [\"{}\"]\n[[rules]]\nname = \"m\"\nrepositories = [\"a/**\"]\n[rules.signatures]\nmin = 2\n[[rules.signatures.notation]]\n{entry}",
            store.display()
        );
        Policy::parse(&text, &root_dir(), "p.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn notation_signers_name_a_trust_store_and_full_identities() {
        let p = notation_policy(
            "trust = \"acme\"\nidentities = [\"x509.subject: C=US, ST=WA, O=ModelGate Test\"]\nlevel = \"permissive\"\n",
        )
        .unwrap();
        let n = &p.rules[0].signatures.as_ref().unwrap().notation[0];
        assert_eq!((n.level, n.line), (Level::Permissive, 10));
        let leaf =
            crate::trust::notation::parse_dn("CN=x,O=ModelGate Test,L=Seattle,ST=WA,C=US").unwrap();
        assert!(n.accepts(&leaf).is_some());
        let d = p.describe();
        assert!(
            d.contains("trust acme: Notation trust store with 1 CA certificates"),
            "{d}"
        );
        assert!(d.contains("notation x509.subject"), "{d}");
        for (entry, needle) in [
            (
                "trust = \"good\"\nidentities = [\"*\"]\n",
                "is a Sigstore trusted_root",
            ),
            (
                "trust = \"nope\"\nidentities = [\"*\"]\n",
                "not a [trust.NAME]",
            ),
            ("trust = \"acme\"\nidentities = []\n", "identities is empty"),
            (
                "trust = \"acme\"\nidentities = [\"*\", \"x509.subject: C=US, ST=WA, O=A\"]\n",
                "cannot be combined",
            ),
            (
                "trust = \"acme\"\nidentities = [\"x509.subject: CN=release\"]\n",
                "needs C",
            ),
            (
                "trust = \"acme\"\nidentities = [\"CN=release\"]\n",
                "x509.subject:",
            ),
            (
                "trust = \"acme\"\nidentities = [\"*\"]\nlevel = \"skip\"\n",
                "level = \"skip\"",
            ),
        ] {
            let e = notation_policy(entry).unwrap_err();
            assert!(e.contains(needle) && e.contains("line 10"), "{entry}: {e}");
        }
    }

    #[test]
    fn model_rules_are_read_with_units_and_mistakes_name_their_line() {
        let rule = |body: &str| {
            let text = format!("[[rules]]\nname = \"m\"\nrepositories = [\"a/**\"]\n{body}");
            Policy::parse(&text, &root_dir(), "p.toml").map_err(|e| e.to_string())
        };
        let p = rule(
            "kinds = [\"modelpack\", \"artifact:application/vnd.unknown.artifact.v1\"]\n[rules.model]\nparam_size = { max = \"70B\" }\nlicenses = { each_one_of = [\"MIT\"], optional = true }\n[rules.config.kitops]\n\"/datasets/*/license\" = { one_of = [\"MIT\"] }\n[rules.layers]\ndeny_paths = [\"*.pkl\"]\nmax_layer_bytes = \"40GiB\"\nmax_layers = 3\n",
        )
        .unwrap();
        let r = &p.rules[0];
        assert_eq!(r.model[1].1.max, Some(70e9));
        assert!(r.model[0].1.optional);
        let l = r.layers.as_ref().unwrap();
        assert_eq!(l.max_layer_bytes, Some(40 << 30));
        assert_eq!(l.max_layers, Some(3));
        assert!(r.needs_model());
        for (body, needle, line) in [
            ("kinds = [\"models\"]\n", "\"models\" is not a kind", 4),
            ("kinds = []\n", "it would admit nothing", 4),
            (
                "[rules.model]\nsize = { max = 3 }\n",
                "model fact \"size\" is not one of",
                5,
            ),
            (
                "[rules.model]\nparam_size = { max = \"lots\" }\n",
                "is not a quantity",
                5,
            ),
            (
                "[rules.model]\nversion = { one_of = [] }\n",
                "one_of is empty",
                5,
            ),
            (
                "[rules.config.modelz]\n\"/a\" = { }\n",
                "\"modelz\" is not a kind",
                5,
            ),
            (
                "[rules.config.kitops]\n\"a\" = { }\n",
                "must start with '/'",
                5,
            ),
            (
                "[rules.layers]\nmax_total_bytes = \"9 parsecs\"\n",
                "max_total_bytes is not a size",
                4,
            ),
            (
                "[rules.layers]\ndeny_paths = [\"[\"]\n",
                "deny_paths \"[\"",
                4,
            ),
            (
                "[rules.labels]\nx = { min = \"3B\" }\n",
                "label values are plain numbers",
                5,
            ),
        ] {
            let e = rule(body).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
            assert!(e.contains(&format!("line {line}")), "{body}: {e}");
        }
    }

    #[test]
    fn trusted_roots_must_load_and_keys_keep_their_names() {
        let bad = |text: &str| {
            Policy::parse(text, &root_dir(), "p.toml")
                .unwrap_err()
                .to_string()
        };
        let e = bad("[trust.x]\ntrusted_root = \"missing.json\"\n");
        assert!(e.contains("line 1") && e.contains("missing.json"), "{e}");
        let e = bad("[trust.x]\ntrusted_root = \"README.md\"\n");
        assert!(e.contains("trust \"x\""), "{e}");
        let e = bad("[trust.x]\nnotation_certs = []\n");
        assert!(e.contains("notation_certs is empty"), "{e}");
        let e = bad("[trust.x]\nnotation_certs = [\"README.md\"]\n");
        assert!(e.contains("line 1") && e.contains("README.md"), "{e}");
        let e = bad("[trust.x]\n");
        assert!(e.contains("exactly one of trusted_root"), "{e}");
        let e = bad("[keys]\n\"keyless:me\" = \"k.pub\"\n");
        assert!(e.contains("kept for keyless signers"), "{e}");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn shipped() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.toml"))
            .unwrap()
    }

    proptest! {
        #![proptest_config(crate::proptests::config())]

        /// Arbitrary text and damaged copies of the shipped policy: parsed
        /// or refused with a message, never a panic.
        #[test]
        fn policies_parse_or_refuse(text in ".{0,200}") {
            let _ = Policy::parse(&text, Path::new("."), "p.toml");
        }

        #[test]
        fn damaged_shipped_policies_parse_or_refuse(bytes in crate::proptests::mutated(shipped().into_bytes())) {
            let text = String::from_utf8_lossy(&bytes);
            let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
            if let Err(e) = Policy::parse(&text, &base, "policy.toml") {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
