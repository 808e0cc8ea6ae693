//! Settings files, the same way in every binary: TOML read into the
//! binary's typed settings (defaults for what the file leaves out), an
//! error that names the file, the line and the column, then overrides from
//! the environment, one variable per setting: the binary's prefix, then the
//! setting's path upper-cased with `_` between section and key
//! (`VOUCH_GATEWAY_` + `backend.url` → `VOUCH_GATEWAY_BACKEND_URL`). A
//! variable with the prefix that names no setting, or whose value does not
//! parse as the setting's type, is an error naming the variable, never
//! ignored. A list setting takes its items separated by commas.
//!
//! ```
//! #[derive(serde::Deserialize, serde::Serialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Settings { listen: String, limits: Limits }
//! #[derive(serde::Deserialize, serde::Serialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Limits { max_links: u32 }
//!
//! use vouch_host::config::{self, Overlay};
//! let s: Settings = config::parse("app.toml", "listen = \"127.0.0.1:1\"\n")?;
//! let env = [("APP_LIMITS_MAX_LINKS".to_string(), "8".to_string())];
//! let s = config::overlay(s, env, &Overlay::new("APP_"))?;
//! assert_eq!((s.listen.as_str(), s.limits.max_links), ("127.0.0.1:1", 8));
//! # Ok::<(), config::ConfigError>(())
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::Value;

/// What is wrong with the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not TOML, or not these settings (a misspelt key, a
    /// value of the wrong type), at this place.
    #[error("{origin}:{line}:{column}: {message} (in `{excerpt}`)")]
    File {
        /// The file (or whatever the text came from).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong.
        message: String,
        /// The line, trimmed (at most 80 characters).
        excerpt: String,
    },
    /// An environment variable names no setting, or its value does not fit.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses `text` (from `origin`, named in errors) into the settings `T`.
pub fn parse<T: DeserializeOwned>(origin: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |r| r.start));
        let excerpt = text.lines().nth(line - 1).unwrap_or("").trim();
        ConfigError::File {
            origin: origin.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
            excerpt: excerpt.chars().take(80).collect(),
        }
    })
}

/// Which environment variables are settings.
pub struct Overlay<'a> {
    prefix: &'a str,
    ignore: &'a dyn Fn(&str) -> bool,
}

impl<'a> Overlay<'a> {
    /// Every variable starting with `prefix` (`VOUCH_GATEWAY_`) is a setting.
    pub fn new(prefix: &'a str) -> Self {
        Self {
            prefix,
            ignore: &|_| false,
        }
    }

    /// Except those `ignore` says belong to someone else (another program's
    /// settings, a command-line flag's variable).
    pub fn ignoring(mut self, ignore: &'a dyn Fn(&str) -> bool) -> Self {
        self.ignore = ignore;
        self
    }
}

/// Applies the environment overrides in `env` (normally
/// `std::env::vars()`) to `settings`, in the order of the variables' names.
pub fn overlay<T>(
    settings: T,
    env: impl IntoIterator<Item = (String, String)>,
    which: &Overlay<'_>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(which.prefix) && !(which.ignore)(name))
        .collect();
    if vars.is_empty() {
        return Ok(settings);
    }
    vars.sort();
    let mut tree = Value::try_from(&settings).map_err(|e| ConfigError::Env {
        name: which.prefix.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = settings;
    for (name, raw) in vars {
        let env = |message: String| ConfigError::Env {
            name: name.clone(),
            message,
        };
        let path = &name[which.prefix.len()..];
        let keys = set_leaf(&mut tree, path, &raw).map_err(env)?;
        out = tree.clone().try_into().map_err(|e: toml::de::Error| {
            let message = e.message().trim();
            env(if message.starts_with("unknown field") {
                "no such setting".to_owned()
            } else {
                message.to_owned()
            })
        })?;
        // A key the settings do not have, where they do not refuse unknown
        // keys, would vanish here: it is not a setting.
        let back = Value::try_from(&out).map_err(|e| env(e.to_string()))?;
        if lookup(&back, &keys).is_none() {
            return Err(env("no such setting".into()));
        }
    }
    Ok(out)
}

/// Sets the leaf named by `path` (`SECTION_KEY`, nested sections joined by
/// `_`, the longest matching key first) to `raw`, parsed as the leaf's
/// type; a leaf the tree does not have yet (a setting whose default is
/// "none") gets `raw` as TOML would read it, or as a string. Returns the
/// keys of the leaf.
fn set_leaf(tree: &mut Value, path: &str, raw: &str) -> Result<Vec<String>, String> {
    let lower = path.to_ascii_lowercase();
    let Value::Table(table) = tree else {
        return Err("not a table".into());
    };
    let mut keys: Vec<String> = table.keys().cloned().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        if lower == key {
            let leaf = table.get_mut(&key).ok_or("no such setting")?;
            *leaf = parse_like(leaf, raw)?;
            return Ok(vec![key]);
        }
        if let Some(rest) = lower.strip_prefix(&format!("{key}_")) {
            if let Some(sub @ Value::Table(_)) = table.get_mut(&key) {
                let mut keys = set_leaf(sub, &path[path.len() - rest.len()..], raw)?;
                keys.insert(0, key);
                return Ok(keys);
            }
        }
    }
    table.insert(lower.clone(), infer(raw));
    Ok(vec![lower])
}

fn parse_like(current: &Value, raw: &str) -> Result<Value, String> {
    Ok(match current {
        Value::Integer(_) => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            _ => return Err(format!("{raw:?} is not a boolean (true/false)")),
        }),
        Value::Float(_) => Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a number"))?,
        ),
        // A list: its items separated by commas (`a,b`), each read as TOML
        // would read it, or as a string.
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(infer)
                .collect(),
        ),
        Value::Table(_) => return Err("not a single setting".into()),
        _ => Value::String(raw.to_owned()),
    })
}

/// `raw` as a TOML value (`8`, `true`, `1.5`), else as a string.
fn infer(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, Value::Table(_) | Value::Array(_)))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn lookup<'v>(tree: &'v Value, keys: &[String]) -> Option<&'v Value> {
    keys.iter().try_fold(tree, |v, k| v.get(k))
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct S {
        listen: String,
        url: Option<String>,
        peers: Vec<String>,
        limits: L,
    }

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct L {
        max_links: u32,
        strict: bool,
    }

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize, Default)]
    #[serde(default)]
    struct Lenient {
        listen: String,
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn file_errors_name_the_line_and_column() {
        let e =
            parse::<S>("s.toml", "listen = \"x\"\n[limits]\nmax_links = \"many\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("s.toml:3:13: "), "{text}");
        assert!(text.ends_with("(in `max_links = \"many\"`)"), "{text}");
        let e = parse::<S>("s.toml", "\n\nbogus = 1\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("s.toml:3:1: unknown field `bogus`"),
            "{e}"
        );
        assert_eq!(line_col("ab\ncé\nd", 6), (2, 3));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("é", 1), (1, 1), "inside a character");
    }

    #[test]
    fn overrides_apply_by_type_and_unknown_or_bad_ones_are_errors() {
        let o = Overlay::new("APP_");
        let s = overlay(
            S::default(),
            vars(&[
                ("APP_LISTEN", "0.0.0.0:1"),
                ("APP_URL", "https://x"),
                ("APP_LIMITS_MAX_LINKS", " 8"),
                ("APP_LIMITS_STRICT", "yes"),
                ("OTHER", "1"),
            ]),
            &o,
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:1");
        assert_eq!(s.url.as_deref(), Some("https://x"));
        assert_eq!((s.limits.max_links, s.limits.strict), (8, true));
        let s = overlay(
            S::default(),
            vars(&[("APP_PEERS", "https://a:1, https://b:2,")]),
            &o,
        )
        .unwrap();
        assert_eq!(s.peers, ["https://a:1", "https://b:2"]);

        for (name, value, says) in [
            ("APP_LIMITS_MAX_LINKS", "lots", "is not an integer"),
            ("APP_LIMITS_STRICT", "maybe", "is not a boolean"),
            ("APP_BOGUS", "1", "no such setting"),
            ("APP_LIMITS", "1", "not a single setting"),
        ] {
            let e = overlay(S::default(), vars(&[(name, value)]), &o).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("environment variable {name}: ")),
                "{text}"
            );
            assert!(text.contains(says), "{text}");
        }
        // Settings that do not refuse unknown keys: still refused here.
        let e = overlay(Lenient::default(), vars(&[("APP_BOGUS", "1")]), &o).unwrap_err();
        assert!(e.to_string().ends_with("no such setting"), "{e}");
        // What `ignoring` names is someone else's.
        let other = |n: &str| n.starts_with("APP_OTHER_");
        let o = Overlay::new("APP_").ignoring(&other);
        assert!(overlay(S::default(), vars(&[("APP_OTHER_X", "1")]), &o).is_ok());
    }
}
