//! The `[auth]` table: which authenticator, and its settings. Everything is checked (and key
//! files read) at load time, so a running gateway never discovers a broken authenticator.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_auth::{
    AnonymousOnly, Authenticator, Cached, HmacTokens, HttpCallback, HttpCallbackConfig,
    JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKey, SetupError, StaticTokens,
};
use gateway_core::MemberId;
use http::header::{HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use super::Resolver;
use super::file::Millis;
use crate::error::ConfigError;

/// How members are authenticated, ready to build.
#[derive(Clone, Default)]
pub enum AuthConfig {
    /// No `[auth]` table, or `kind = "anonymous"`: every member is refused.
    #[default]
    Anonymous,
    /// `kind = "static"`: the `[auth.tokens]` table.
    Static(StaticTokens),
    /// `kind = "hmac"`: shared-secret tokens.
    Hmac(HmacTokens),
    /// `kind = "jwt"`.
    Jwt(Arc<JwtAuthenticator>),
    /// `kind = "http"`: the app's backend decides, optionally cached.
    Http {
        callback: HttpCallbackConfig,
        cache: Option<CacheSettings>,
    },
}

/// `cache_ttl_s` and `cache_max_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entries: usize,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every variant's Debug already hides its secrets.
        match self {
            AuthConfig::Anonymous => f.write_str("Anonymous"),
            AuthConfig::Static(tokens) => write!(f, "Static({tokens:?})"),
            AuthConfig::Hmac(tokens) => write!(f, "Hmac({tokens:?})"),
            AuthConfig::Jwt(jwt) => write!(f, "Jwt({jwt:?})"),
            AuthConfig::Http { callback, cache } => write!(f, "Http({callback:?}, {cache:?})"),
        }
    }
}

impl AuthConfig {
    /// Builds the authenticator this configuration describes. Call inside a Tokio runtime
    /// (the HTTP callback's connection pool needs one).
    pub fn build(&self) -> Arc<dyn Authenticator> {
        match self {
            AuthConfig::Anonymous => Arc::new(AnonymousOnly),
            AuthConfig::Static(tokens) => Arc::new(tokens.clone()),
            AuthConfig::Hmac(tokens) => Arc::new(tokens.clone()),
            AuthConfig::Jwt(jwt) => jwt.clone(),
            AuthConfig::Http { callback, cache } => {
                let callback = HttpCallback::new(callback.clone())
                    .expect("the callback was built once when the configuration was loaded");
                match cache {
                    None => Arc::new(callback),
                    Some(cache) => Arc::new(Cached::new(callback, cache.ttl, cache.max_entries)),
                }
            }
        }
    }
}

/// A string or a list of strings (`issuer = "a"` or `issuer = ["a", "b"]`).
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// The `[auth]` table as written: `kind` picks the variant, and each kind accepts only its own
/// keys. Read in two steps (see [`read_file_auth`]) so that errors name the exact key.
pub(super) enum FileAuth {
    Anonymous,
    Static(StaticAuth),
    Hmac(HmacAuth),
    Jwt(JwtAuth),
    Http(HttpAuth),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnonymousAuth {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StaticAuth {
    tokens: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HmacAuth {
    secrets: Option<Vec<String>>,
    leeway_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtAuth {
    algorithm: Option<String>,
    secret: Option<String>,
    public_key_file: Option<PathBuf>,
    member_claim: Option<String>,
    apps_claim: Option<String>,
    leeway_s: Option<u64>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpAuth {
    url: Option<String>,
    timeout_ms: Option<Millis>,
    max_concurrency: Option<usize>,
    cache_ttl_s: Option<u64>,
    cache_max_entries: Option<usize>,
    headers: Option<BTreeMap<String, String>>,
    ca_file: Option<PathBuf>,
}

const KINDS: &str = "\"anonymous\", \"static\", \"hmac\", \"jwt\" or \"http\"";

/// Reads `[auth]`: first `kind`, then the rest into that kind's own struct.
pub(super) fn read_file_auth(
    mut table: toml::Table,
    r: &Resolver<'_>,
) -> Result<FileAuth, ConfigError> {
    let kind = match table.remove("kind") {
        Some(toml::Value::String(kind)) => kind,
        Some(_) => return Err(r.invalid("auth.kind", format!("must be a string: {KINDS}"))),
        None => return Err(r.invalid("auth.kind", format!("is missing: {KINDS}"))),
    };
    fn read<T: serde::de::DeserializeOwned>(
        table: toml::Table,
        r: &Resolver<'_>,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let key = format!("auth.{}", err.path());
            let message = err.into_inner().message().trim_end().to_owned();
            let message = super::effective::without_secret_values(&key, message);
            r.invalid(&key, message)
        })
    }
    Ok(match kind.as_str() {
        "anonymous" => {
            read::<AnonymousAuth>(table, r)?;
            FileAuth::Anonymous
        }
        "static" => FileAuth::Static(read(table, r)?),
        "hmac" => FileAuth::Hmac(read(table, r)?),
        "jwt" => FileAuth::Jwt(read(table, r)?),
        "http" => FileAuth::Http(read(table, r)?),
        other => {
            return Err(r.invalid(
                "auth.kind",
                format!("unknown kind `{other}`; expected {KINDS}"),
            ));
        }
    })
}

/// The default leeway for token expiry, in seconds.
const DEFAULT_LEEWAY_S: u64 = 5;
/// The default bound of the HTTP callback's cache.
const DEFAULT_CACHE_MAX_ENTRIES: usize = 100_000;

pub(super) fn resolve(file: FileAuth, r: &Resolver<'_>) -> Result<AuthConfig, ConfigError> {
    let setup = |key: &'static str| move |err: SetupError| r.invalid(key, err.to_string());
    match file {
        FileAuth::Anonymous => Ok(AuthConfig::Anonymous),
        FileAuth::Static(StaticAuth { tokens }) => {
            let tokens = tokens.ok_or_else(|| {
                r.invalid(
                    "auth.tokens",
                    "kind = \"static\" needs a [auth.tokens] table of member id = \"token\"",
                )
            })?;
            if tokens.is_empty() {
                return Err(r.invalid(
                    "auth.tokens",
                    "is empty: list at least one member id = \"token\"",
                ));
            }
            let pairs = tokens
                .into_iter()
                .map(|(key, token)| {
                    let name = format!("auth.tokens.{key}");
                    let member =
                        key.parse::<i64>()
                            .ok()
                            .and_then(MemberId::new)
                            .ok_or_else(|| {
                                r.invalid(&name, "the key must be a member id, an integer > 0")
                            })?;
                    if token.is_empty() {
                        return Err(r.invalid(&name, "the token must not be empty"));
                    }
                    Ok((member, token))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AuthConfig::Static(StaticTokens::new(pairs)))
        }
        FileAuth::Hmac(HmacAuth { secrets, leeway_s }) => {
            let secrets = secrets.ok_or_else(|| {
                r.invalid(
                    "auth.secrets",
                    "kind = \"hmac\" needs secrets = [\"…\"] (current first)",
                )
            })?;
            let secrets = secrets.into_iter().map(String::into_bytes).collect();
            HmacTokens::new(secrets, leeway_s.unwrap_or(DEFAULT_LEEWAY_S))
                .map(AuthConfig::Hmac)
                .map_err(setup("auth.secrets"))
        }
        FileAuth::Jwt(JwtAuth {
            algorithm,
            secret,
            public_key_file,
            member_claim,
            apps_claim,
            leeway_s,
            issuer,
            audience,
        }) => {
            let algorithm: JwtAlgorithm = algorithm
                .ok_or_else(|| {
                    r.invalid(
                        "auth.algorithm",
                        "kind = \"jwt\" needs an algorithm, e.g. \"HS256\" or \"RS256\"",
                    )
                })?
                .parse()
                .map_err(setup("auth.algorithm"))?;
            let key = match (secret, public_key_file) {
                (Some(_), Some(_)) => {
                    return Err(r.invalid(
                        "auth.secret",
                        "give either secret (HS*) or public_key_file (RS*/ES*), not both",
                    ));
                }
                (Some(secret), None) => JwtKey::Secret(secret.into_bytes()),
                (None, Some(file)) => {
                    let path = r.relative("auth.public_key_file", &file);
                    let pem = std::fs::read(&path).map_err(|err| {
                        r.invalid(
                            "auth.public_key_file",
                            format!("cannot read `{}`: {err}", path.display()),
                        )
                    })?;
                    JwtKey::PublicKeyPem {
                        pem,
                        source: path.display().to_string(),
                    }
                }
                (None, None) => {
                    return Err(r.invalid(
                        "auth.secret",
                        "kind = \"jwt\" needs secret (HS*) or public_key_file (RS*/ES*)",
                    ));
                }
            };
            let key_name = match key {
                JwtKey::Secret(_) => "auth.secret",
                JwtKey::PublicKeyPem { .. } => "auth.public_key_file",
            };
            let mut config = JwtConfig::new(algorithm, key);
            if let Some(claim) = member_claim {
                config.member_claim = claim;
            }
            config.apps_claim = apps_claim;
            config.leeway_s = leeway_s.unwrap_or(DEFAULT_LEEWAY_S);
            config.issuers = issuer.map(OneOrMany::into_vec);
            config.audiences = audience.map(OneOrMany::into_vec);
            JwtAuthenticator::new(config)
                .map(|jwt| AuthConfig::Jwt(Arc::new(jwt)))
                .map_err(setup(key_name))
        }
        FileAuth::Http(HttpAuth {
            url,
            timeout_ms,
            max_concurrency,
            cache_ttl_s,
            cache_max_entries,
            headers,
            ca_file,
        }) => {
            let url = url
                .ok_or_else(|| r.invalid("auth.url", "kind = \"http\" needs url = \"http://…\""))?;
            let mut callback = HttpCallbackConfig::new(&url).map_err(setup("auth.url"))?;
            if let Some(ms) = timeout_ms {
                callback.timeout = r.millis("auth.timeout_ms", Some(ms), callback.timeout)?;
            }
            callback.max_concurrency = r.positive(
                "auth.max_concurrency",
                max_concurrency,
                callback.max_concurrency,
            )?;
            for (name, value) in headers.unwrap_or_default() {
                let key = format!("auth.headers.{name}");
                let header = HeaderName::try_from(name.as_str())
                    .map_err(|_| r.invalid(&key, "not a valid HTTP header name"))?;
                let value = HeaderValue::try_from(value)
                    .map_err(|_| r.invalid(&key, "not a valid HTTP header value"))?;
                callback.headers.push((header, value));
            }
            if let Some(file) = ca_file {
                let path = r.relative("auth.ca_file", &file);
                callback.ca_certs = CertificateDer::pem_file_iter(&path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|err| {
                        r.invalid(
                            "auth.ca_file",
                            format!("cannot read certificates from `{}`: {err}", path.display()),
                        )
                    })?;
                if callback.ca_certs.is_empty() {
                    return Err(r.invalid(
                        "auth.ca_file",
                        format!("`{}` holds no certificate", path.display()),
                    ));
                }
            }
            // Built once here so that a bad CA certificate stops the start.
            HttpCallback::new(callback.clone()).map_err(setup("auth.ca_file"))?;
            let cache = match cache_ttl_s {
                None | Some(0) => {
                    if cache_max_entries.is_some() {
                        return Err(
                            r.invalid("auth.cache_max_entries", "only used with cache_ttl_s > 0")
                        );
                    }
                    None
                }
                Some(ttl) => Some(CacheSettings {
                    ttl: Duration::from_secs(ttl),
                    max_entries: r.positive(
                        "auth.cache_max_entries",
                        cache_max_entries,
                        DEFAULT_CACHE_MAX_ENTRIES,
                    )?,
                }),
            };
            Ok(AuthConfig::Http { callback, cache })
        }
    }
}
