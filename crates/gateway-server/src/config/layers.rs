//! The layers of the configuration, lowest first: the defaults, the TOML file, the
//! environment variables `WS_GATEWAY_*`, the flags. `figment` merges them and remembers which
//! layer gave each value, so that an error and `check-config` can say where a value came from.
//!
//! The file is first read on its own with `toml`, so that its syntax errors, unknown keys and
//! wrong types keep their line and column; the merged result is then validated as a whole.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::Config;
use super::file::{self, FileConfig};
use super::resolve::Resolver;
use crate::error::ConfigError;

/// The prefix of the configuration's environment variables.
pub const ENV_PREFIX: &str = "WS_GATEWAY_";
/// `WS_GATEWAY_*` variables that are not configuration keys: they stand for flags of the
/// binary (`--config`, `--log-format`).
const ENV_NOT_KEYS: [&str; 2] = ["config", "log_format"];

/// Where the layers come from. `Layers::default()` is the defaults alone. Its `Debug` names
/// the environment's keys, never their values (they may be secrets).
#[derive(Clone, Default)]
pub struct Layers {
    file: Option<PathBuf>,
    /// `(key, value)` pairs, keys in dotted form (`limits.max_connections`).
    env: Vec<(String, String)>,
    listen: Option<String>,
    stat_listen: Option<String>,
}

/// A loaded configuration, and each key's value as layered (as written, before validation)
/// with the layer it came from: what `check-config` prints and a reload compares. Its `Debug`
/// is the configuration's, which redacts secrets.
#[derive(Clone)]
pub struct Loaded {
    pub config: Config,
    pub(super) entries: Vec<super::Entry>,
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("Layers")
            .field("file", &self.file)
            .field("env_keys", &env_keys)
            .field("listen", &self.listen)
            .field("stat_listen", &self.stat_listen)
            .finish()
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// The layer a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    /// The variable's name.
    Env(String),
    /// The flag, e.g. `--listen`.
    Flag(&'static str),
}

impl Origin {
    /// How an error names it: "config file `gw.toml`", "environment variable `WS_GATEWAY_X`".
    /// A default is only ever wrong together with another key: name the file if there is one.
    pub(super) fn describe(&self, file: Option<&Path>) -> String {
        match (self, file) {
            (Origin::File(path), _) => format!("config file `{}`", path.display()),
            (Origin::Default, Some(path)) => format!("config file `{}`", path.display()),
            (Origin::Default, None) => "configuration".to_owned(),
            (Origin::Env(name), _) => format!("environment variable `{name}`"),
            (Origin::Flag(flag), _) => format!("flag `{flag}`"),
        }
    }
}

impl std::fmt::Display for Origin {
    /// The short form `check-config` prints: `default`, `file gw.toml`, `env WS_GATEWAY_X`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The environment variable that sets `key`: `limits.max_connections` is
/// `WS_GATEWAY_LIMITS__MAX_CONNECTIONS`.
pub fn env_var(key: &str) -> String {
    let path: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    format!("{ENV_PREFIX}{}", path.join("__"))
}

/// Which layer gave each key, for errors and `check-config`.
pub(crate) struct Origins<'a> {
    file: Option<&'a Path>,
    figment: Option<&'a Figment>,
}

impl Origins<'_> {
    pub(super) fn file(&self) -> Option<&Path> {
        self.file
    }

    pub(super) fn of(&self, key: &str) -> Origin {
        let Some(metadata) = self.figment.and_then(|f| f.find_metadata(key)) else {
            return match self.file {
                Some(path) => Origin::File(path.to_owned()),
                None => Origin::Default,
            };
        };
        origin_of(metadata, key, self.file)
    }

    /// The file a path-valued key came from, if it came from the file.
    pub(super) fn file_of(&self, key: &str) -> Option<&Path> {
        match self.of(key) {
            Origin::File(_) => self.file,
            _ => None,
        }
    }
}

fn origin_of(metadata: &Metadata, key: &str, file: Option<&Path>) -> Origin {
    match metadata.name.as_ref() {
        FILE_LAYER => file.map_or(Origin::Default, |path| Origin::File(path.to_owned())),
        ENV_LAYER => Origin::Env(env_var(key)),
        "flag --listen" => Origin::Flag("--listen"),
        "flag --stat-listen" => Origin::Flag("--stat-listen"),
        _ => Origin::Default,
    }
}

const DEFAULT_LAYER: &str = "default";
const FILE_LAYER: &str = "file";
const ENV_LAYER: &str = "environment";

/// One layer: a name and its values.
struct Layer {
    name: &'static str,
    data: Dict,
}

impl Layer {
    fn of(name: &'static str, values: impl serde::Serialize) -> Layer {
        let data = Value::serialize(values)
            .ok()
            .and_then(Value::into_dict)
            .unwrap_or_default();
        Layer { name, data }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

impl Layers {
    /// The TOML file (`--config`).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Layers {
        self.file = Some(path.into());
        self
    }

    /// `--listen`: overrides every other layer.
    pub fn listen(mut self, addr: Option<String>) -> Layers {
        self.listen = addr;
        self
    }

    /// `--stat-listen`.
    pub fn stat_listen(mut self, addr: Option<String>) -> Layers {
        self.stat_listen = addr;
        self
    }

    /// The process's `WS_GATEWAY_*` variables (but `WS_GATEWAY_CONFIG` and
    /// `WS_GATEWAY_LOG_FORMAT`): `__` separates the parts of a key.
    pub fn process_env(mut self) -> Layers {
        self.env = figment::providers::Env::prefixed(ENV_PREFIX)
            .split("__")
            .ignore(&ENV_NOT_KEYS)
            .iter()
            .map(|(key, value)| (key.as_str().to_owned(), value))
            .collect();
        self
    }

    /// `(key, value)` as if set by `WS_GATEWAY_<KEY>` (tests).
    pub fn env(mut self, key: &str, value: &str) -> Layers {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Reads the file (if any), merges the layers and validates the result.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let text = match &self.file {
            None => None,
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
        };
        self.load_text(text.as_deref())
    }

    /// As [`load`](Self::load), with the file's text given.
    pub(super) fn load_text(&self, text: Option<&str>) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::new().merge(Layer::of(DEFAULT_LAYER, file::defaults()));
        let mut history_order = Vec::new();
        if let (Some(text), Some(path)) = (text, &self.file) {
            figment = figment.merge(Layer::of(FILE_LAYER, read_file(text, path)?));
            history_order = super::history::file_order(text);
        }
        figment = figment.merge(Layer {
            name: ENV_LAYER,
            data: env_values(&self.env),
        });
        if let Some(listen) = &self.listen {
            figment = figment.merge(Layer::of("flag --listen", one_key("listen", listen)));
        }
        if let Some(stat_listen) = &self.stat_listen {
            figment = figment.merge(Layer::of(
                "flag --stat-listen",
                one_key("stat_listen", stat_listen),
            ));
        }
        let origins = Origins {
            file: self.file.as_deref(),
            figment: Some(&figment),
        };
        let merged: FileConfig = figment
            .extract()
            .map_err(|err| layer_error(err, &origins))?;
        let config = Resolver {
            origins: &origins,
            history_order: &history_order,
        }
        .resolve(merged)?;
        let values: Dict = figment
            .extract()
            .map_err(|err| layer_error(err, &origins))?;
        let entries = super::effective::entries(&values, &origins, &config);
        Ok(Loaded { config, entries })
    }
}

fn one_key<'a>(key: &'a str, value: &'a str) -> std::collections::BTreeMap<&'a str, &'a str> {
    std::collections::BTreeMap::from([(key, value)])
}

/// The file alone: its TOML syntax, then its shape (unknown keys, wrong types), each error
/// with its line and column. Returns its table, for the file's layer.
fn read_file(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    let syntax = |err: toml::de::Error, key: Option<String>| {
        let message = err.message().trim_end().to_owned();
        let message = match &key {
            Some(key) => super::effective::without_secret_values(key, message),
            None => message,
        };
        ConfigError::Syntax {
            origin: Origin::File(path.to_owned()).describe(None),
            key,
            message: format!("{message}{}", position(text, err.span())),
        }
    };
    let table: toml::Table = toml::from_str(text).map_err(|err| syntax(err, None))?;
    let deserializer = toml::Deserializer::parse(text).map_err(|err| syntax(err, None))?;
    let _: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        syntax(err.into_inner(), (key != ".").then_some(key))
    })?;
    Ok(table)
}

/// " (line L, column C)" for a byte span of `text`.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

/// The environment's values. `figment` reads `10000` as a number, `true` as a boolean and
/// `[a, b]` as a list; a token or a secret made of digits must stay the text it is, so only
/// keys that hold numbers, durations or switches keep a number or a boolean.
fn env_values(env: &[(String, String)]) -> Dict {
    let mut dict = Dict::new();
    for (key, raw) in env {
        let parsed: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
        let value = match parsed {
            Value::Num(..) | Value::Bool(..) if !holds_number_or_switch(key) => {
                Value::from(raw.clone())
            }
            parsed => parsed,
        };
        let nested = figment::util::nest(key, value)
            .into_dict()
            .unwrap_or_default();
        dict = merge(dict, nested);
    }
    dict
}

/// Merges `b` into `a`, `b` winning, dictionaries merged key by key.
fn merge(mut a: Dict, b: Dict) -> Dict {
    for (key, value) in b {
        let merged = match (a.remove(&key), value) {
            (Some(Value::Dict(_, old)), Value::Dict(tag, new)) => Value::Dict(tag, merge(old, new)),
            (_, value) => value,
        };
        a.insert(key, merged);
    }
    a
}

fn holds_number_or_switch(key: &str) -> bool {
    key.starts_with("limits.")
        || key.starts_with("memory.")
        || key.starts_with("history.")
        || key.ends_with("_ms")
        || key.ends_with("_s")
        || matches!(
            key,
            "demo_page" | "auth.max_concurrency" | "auth.cache_max_entries"
        )
}

/// An error of the merged layers (the file alone was already checked): names the variable or
/// flag that set the key.
fn layer_error(err: figment::Error, origins: &Origins<'_>) -> ConfigError {
    // For an unknown key, figment's path already ends with it.
    let key = err.path.join(".");
    let origin = if key.is_empty() {
        Origin::Default
    } else {
        origins.of(&key)
    };
    let message = match &err.kind {
        figment::error::Kind::UnknownField(field, expected) => format!(
            "unknown key `{field}`; expected one of: {}",
            expected.join(", ")
        ),
        kind => super::effective::without_secret_values(&key, kind.to_string()),
    };
    ConfigError::Syntax {
        origin: origin.describe(origins.file()),
        key: (!key.is_empty()).then_some(key),
        message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn environment_values_keep_digits_as_text_except_where_numbers_belong() {
        let env = [
            ("auth.tokens.5".to_owned(), "0123".to_owned()),
            ("limits.max_connections".to_owned(), "5".to_owned()),
            ("timeouts.auth_ms".to_owned(), "2s".to_owned()),
            ("demo_page".to_owned(), "false".to_owned()),
            (
                "push_api_keys".to_owned(),
                "[\"0123456789abcdefg\"]".to_owned(),
            ),
        ];
        let dict = env_values(&env);
        let find = |path: &str| {
            Figment::new()
                .merge(Layer {
                    name: ENV_LAYER,
                    data: dict.clone(),
                })
                .find_value(path)
                .unwrap()
        };
        assert_eq!(find("auth.tokens.5").as_str(), Some("0123"));
        assert_eq!(find("limits.max_connections").to_u128(), Some(5));
        assert_eq!(find("timeouts.auth_ms").as_str(), Some("2s"));
        assert_eq!(find("demo_page").to_bool(), Some(false));
        assert_eq!(
            find("push_api_keys").into_array().unwrap()[0].as_str(),
            Some("0123456789abcdefg")
        );
    }

    #[test]
    fn every_key_has_its_variable() {
        assert_eq!(
            env_var("limits.max_connections"),
            "WS_GATEWAY_LIMITS__MAX_CONNECTIONS"
        );
        assert_eq!(env_var("stat_listen"), "WS_GATEWAY_STAT_LISTEN");
    }
}
