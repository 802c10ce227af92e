//! The effective configuration, key by key: what `ws-gateway check-config` prints (every key,
//! its value with secrets redacted, and the layer it came from), and which keys a reload
//! (SIGHUP) applies to a running gateway.

use std::fmt::Write as _;

use figment::value::{Dict, Value};
use gateway_broker::redact_url;

use super::layers::{Loaded, Origins};
use super::{AuthConfig, Config};

/// One key of the effective configuration. Its `Debug` shows the value as `check-config`
/// does, secrets redacted.
#[derive(Clone)]
pub struct Entry {
    /// Dotted, e.g. `limits.max_connections`.
    pub key: String,
    /// As layered, before validation (`"10s"` stays `"10s"`); `None`: not set, no default.
    value: Option<Value>,
    pub origin: super::Origin,
    /// What it means when that is not obvious from the value: what a host name resolved to,
    /// what an unset key means.
    note: Option<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = shown(&self.key);
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field(
                "value",
                &self.value.as_ref().map(|v| toml_text(&redacted(v, &how))),
            )
            .field("origin", &self.origin)
            .finish()
    }
}

/// Keys without a default whose absence means something.
const UNSET_MEANS: [(&str, &str); 4] = [
    ("allowed_origins", "any origin"),
    ("tls", "plain TCP (ws://, http://)"),
    ("stat_tls", "plain TCP"),
    ("auth.kind", "\"anonymous\": every member is refused"),
];

pub(super) fn entries(values: &Dict, origins: &Origins<'_>, config: &Config) -> Vec<Entry> {
    let mut entries = Vec::new();
    flatten("", values, &mut |key, value| {
        entries.push(Entry {
            key: key.to_owned(),
            value: Some(value.clone()),
            origin: origins.of(key),
            note: None,
        });
    });
    for (key, meaning) in UNSET_MEANS {
        let top = key.split('.').next().unwrap_or(key);
        if !entries
            .iter()
            .any(|e| e.key == key || e.key.starts_with(&format!("{top}.")) || e.key == top)
        {
            entries.push(Entry {
                key: key.to_owned(),
                value: None,
                origin: super::Origin::Default,
                note: Some(format!("not set: {meaning}")),
            });
        }
    }
    for entry in &mut entries {
        let resolved = match entry.key.as_str() {
            "listen" => config.server.listen,
            "stat_listen" => config.server.stat_listen,
            _ => continue,
        };
        if entry.value.as_ref().and_then(Value::as_str) != Some(&resolved.to_string()) {
            entry.note = Some(format!("resolves to {resolved}"));
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

fn flatten(prefix: &str, dict: &Dict, visit: &mut impl FnMut(&str, &Value)) {
    for (name, value) in dict {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Dict(_, inner) if !inner.is_empty() => flatten(&key, inner, visit),
            Value::Empty(..) => {}
            value => visit(&key, value),
        }
    }
}

/// How a key's value is shown.
enum Shown {
    Plain,
    /// Every string replaced: push keys, HMAC and JWT secrets, static tokens, header values,
    /// NATS token and password.
    Secret,
    /// Passwords in URLs replaced.
    Url,
}

fn shown(key: &str) -> Shown {
    let secret = matches!(
        key,
        "push_api_keys" | "auth.secrets" | "auth.secret" | "broker.token" | "broker.password"
    ) || key.starts_with("auth.tokens.")
        || key.starts_with("auth.headers.");
    if secret {
        Shown::Secret
    } else if key.ends_with(".url") || key.ends_with(".urls") {
        Shown::Url
    } else {
        Shown::Plain
    }
}

/// An error message about `key` (`push_api_keys`, `auth.secrets[0]`…), with every quoted value
/// in it replaced when the key holds a secret or a URL: serde and figment quote the value they
/// refused (`invalid type: string "…", expected a sequence`), and such a message goes to the
/// terminal, and to the journal on SIGHUP.
pub(super) fn without_secret_values(key: &str, message: String) -> String {
    let key = key.split('[').next().unwrap_or(key);
    if matches!(shown(key), Shown::Plain) {
        return message;
    }
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    // Odd parts are quoted: the value.
    for (i, part) in parts.enumerate() {
        out.push('"');
        out.push_str(if i % 2 == 0 { "<redacted>" } else { part });
    }
    out
}

fn redacted(value: &Value, how: &Shown) -> Value {
    match (value, how) {
        (_, Shown::Plain) => value.clone(),
        (Value::Array(tag, items), how) => {
            Value::Array(*tag, items.iter().map(|v| redacted(v, how)).collect())
        }
        (Value::String(tag, _), Shown::Secret) => Value::String(*tag, "<redacted>".to_owned()),
        (Value::String(tag, url), Shown::Url) => Value::String(*tag, redact_url(url)),
        (Value::Num(tag, _), Shown::Secret) => Value::String(*tag, "<redacted>".to_owned()),
        (value, _) => value.clone(),
    }
}

/// A value as TOML writes it inline.
fn toml_text(value: &Value) -> String {
    toml::Value::try_from(value).map_or_else(|_| format!("{value:?}"), |v| v.to_string())
}

impl Loaded {
    /// Every key, one a line: `key = value  # origin` (secrets redacted), sorted by key.
    pub fn render(&self) -> String {
        let lines: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|entry| {
                let left = match &entry.value {
                    Some(value) => format!(
                        "{} = {}",
                        entry.key,
                        toml_text(&redacted(value, &shown(&entry.key)))
                    ),
                    None => format!("# {}", entry.key),
                };
                let mut right = entry.origin.to_string();
                if let Some(note) = &entry.note {
                    right = format!("{right}; {note}");
                }
                (left, right)
            })
            .collect();
        let width = lines
            .iter()
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(0)
            .min(60);
        let mut out = String::new();
        for (left, right) in lines {
            let _ = writeln!(out, "{left:width$}  # {right}");
        }
        out
    }

    /// The keys whose layered value differs between `self` and `other`.
    pub fn changed_keys(&self, other: &Loaded) -> Vec<String> {
        let value_of = |loaded: &Loaded, key: &str| {
            loaded
                .entries
                .iter()
                .find(|e| e.key == key)
                .and_then(|e| e.value.clone())
        };
        let mut keys: Vec<String> = self
            .entries
            .iter()
            .chain(&other.entries)
            .map(|e| e.key.clone())
            .filter(|key| value_of(self, key) != value_of(other, key))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether the authenticator is the anonymous one (for the start-up warning).
    pub fn is_anonymous(&self) -> bool {
        matches!(self.config.auth, AuthConfig::Anonymous)
    }
}

/// Whether a changed key takes effect only after a restart. A reload applies the rest: the
/// authenticator (`auth.*`), who may push (`push_api_keys`, `push_allow_from`), the allowed
/// origins, the push body's size and deadline, and `[memory]`. Everything else is bound into
/// listeners, connections, the hub or the broker.
pub fn needs_restart(key: &str) -> bool {
    let live = key.starts_with("auth.")
        || key.starts_with("memory.")
        || matches!(
            key,
            "push_api_keys"
                | "push_allow_from"
                | "allowed_origins"
                | "limits.max_push_body_bytes"
                | "timeouts.push_body_ms"
        );
    !live
}
