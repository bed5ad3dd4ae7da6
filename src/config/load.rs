//! Layering — flag > env > file > default — on `toml::Value`s, with a note of
//! where each value came from so that an error can say so. No key is merged
//! by name: the file's table is reshaped into the tree's shape (the queues as
//! a list of tables), the flags are written over it, and serde reads the
//! result into [`Config`], whose `Default` fills the rest.

use std::collections::HashMap;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::keys::{self, Key, Kind, Scope, QUEUE_IDENTITY};
use super::{Config, ConfigError, Origin};

/// A flag or environment variable that was set.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static Key,
    /// The text given; a repeated flag gives several.
    pub values: Vec<String>,
    pub origin: Origin,
}

impl Setting {
    /// The flag `--{flag} {value}`, as if given on the command line.
    pub fn flag(flag: &str, value: &str) -> Option<Setting> {
        Some(Setting {
            key: keys::by_flag(flag)?,
            values: vec![value.to_string()],
            origin: Origin::Flag(format!("--{flag}")),
        })
    }
}

/// Reads the file (if any), lays the settings over it and validates.
pub fn load(file: Option<&Path>, settings: &[Setting]) -> Result<Config, ConfigError> {
    let Some(path) = file else {
        return layer(Table::new(), Origins::default(), settings);
    };
    let path = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let (table, origins) = parse(&path, &text)?;
    layer(table, origins, settings)
}

/// A config from TOML text (named `<toml>` in errors) and settings.
pub(super) fn from_toml(text: &str, settings: &[Setting]) -> Result<Config, ConfigError> {
    let (table, origins) = parse("<toml>", text)?;
    layer(table, origins, settings)
}

/// Where each value came from, by path (`queue[1].drain_rate`).
#[derive(Default)]
struct Origins(HashMap<String, Origin>);

impl Origins {
    /// The origin of `path`, or of the list it is an item of.
    fn of(&self, mut path: &str) -> Option<Origin> {
        loop {
            if let Some(origin) = self.0.get(path) {
                return Some(origin.clone());
            }
            path = path
                .strip_suffix(']')
                .and_then(|p| Some(&p[..p.rfind('[')?]))?;
        }
    }

    /// `to` came from where `from` did.
    fn copy(&mut self, from: &str, to: String) {
        if let Some(origin) = self.of(from) {
            self.0.insert(to, origin);
        }
    }

    /// Records the line and column of every key (and list item) in `table`.
    fn note(&mut self, table: &DeTable, prefix: &str, at: &impl Fn(usize) -> Origin) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.0.insert(path.clone(), at(key.span().start));
            let items = match value.get_ref() {
                DeValue::Array(items) => items.iter().collect(),
                _ => vec![value],
            };
            for (i, item) in items.into_iter().enumerate() {
                let path = match value.get_ref() {
                    DeValue::Array(_) => format!("{path}[{i}]"),
                    _ => path.clone(),
                };
                self.0.entry(path.clone()).or_insert(at(item.span().start));
                if let DeValue::Table(t) = item.get_ref() {
                    self.note(t, &path, at);
                }
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    match prefix {
        "" => key.to_string(),
        _ => format!("{prefix}.{key}"),
    }
}

/// The file's values, and where in it each one is.
fn parse(path: &str, text: &str) -> Result<(Table, Origins), ConfigError> {
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    };
    let table = toml::from_str(text).map_err(parse_error)?;
    let spans = DeTable::parse(text).map_err(parse_error)?;
    let at = |offset: usize| {
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Origin::File {
            path: path.to_string(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    };
    let mut origins = Origins::default();
    origins.note(spans.get_ref(), "", &at);
    Ok((table, origins))
}

fn invalid(key: &str, origin: Option<Origin>, message: impl Into<String>) -> ConfigError {
    let (key, message) = (key.to_string(), message.into());
    ConfigError::Invalid {
        key,
        origin,
        message,
    }
}

/// The values on their way into the tree: the top-level table, the queues'
/// tables, and where each value came from.
struct Layers {
    top: Table,
    queues: Vec<Table>,
    /// Whether the file declared `[[queue]]` tables (else there is one queue).
    tables: bool,
    origins: Origins,
}

fn layer(top: Table, origins: Origins, settings: &[Setting]) -> Result<Config, ConfigError> {
    let mut layers = Layers::queues(top, origins)?;
    layers.inherit();
    for setting in settings {
        layers.set(setting)?;
    }
    let Layers {
        mut top,
        queues,
        origins,
        ..
    } = layers;
    top.insert(
        "queue".into(),
        Value::Array(queues.into_iter().map(Value::Table).collect()),
    );
    let mut config: Config =
        serde_path_to_error::deserialize(Value::Table(top)).map_err(|e| refused(e, &origins))?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid {
            key,
            origin: None,
            message,
        } => invalid(&key, origins.of(&key), message),
        other => other,
    })?;
    Ok(config)
}

impl Layers {
    /// The file's `[[queue]]` tables, or one queue from `queue` and `route`.
    fn queues(mut top: Table, mut origins: Origins) -> Result<Layers, ConfigError> {
        let queues = match top.remove("queue") {
            Some(Value::Array(tables)) => {
                if top.contains_key("route") {
                    let message =
                        "top-level `queue`/`route` cannot be combined with [[queue]] tables";
                    return Err(invalid("queue", origins.of("route"), message));
                }
                let mut queues = Vec::new();
                for (i, table) in tables.into_iter().enumerate() {
                    let at = format!("queue[{i}]");
                    let fail = |m: String| invalid(&at, origins.of(&at), m);
                    let table = table.try_into::<Table>().map_err(|e| fail(e.to_string()))?;
                    if let Some((f, _)) =
                        QUEUE_IDENTITY.iter().find(|(f, _)| !table.contains_key(*f))
                    {
                        return Err(fail(format!("missing key `{f}`")));
                    }
                    queues.push(table);
                }
                return Ok(Layers {
                    top,
                    queues,
                    tables: true,
                    origins,
                });
            }
            name @ (Some(Value::String(_)) | None) => [name, top.remove("route")],
            Some(_) => {
                let message = "must be a name or [[queue]] tables";
                return Err(invalid("queue", origins.of("queue"), message));
            }
        };
        let mut queue = Table::new();
        for ((field, top_level), value) in QUEUE_IDENTITY.iter().zip(queues) {
            if let Some(value) = value {
                queue.insert(field.to_string(), value);
                origins.copy(top_level, format!("queue[0].{field}"));
            }
        }
        Ok(Layers {
            top,
            queues: vec![queue],
            tables: false,
            origins,
        })
    }

    /// The file's top-level queue keys become the defaults of every queue.
    fn inherit(&mut self) {
        for key in keys::keys()
            .iter()
            .filter(|k| k.scope != Scope::Global && !k.names_queue())
        {
            let value = match key.scope {
                Scope::Both => self.top.get(&key.name).cloned(),
                _ => self.top.remove(&key.name),
            };
            let Some(value) = value else { continue };
            for (i, queue) in self.queues.iter_mut().enumerate() {
                if !queue.contains_key(&key.name) {
                    queue.insert(key.name.clone(), value.clone());
                    self.origins
                        .copy(&key.name, format!("queue[{i}].{}", key.name));
                }
            }
        }
    }

    /// A flag or variable, over everything; a queue key sets every queue.
    fn set(
        &mut self,
        Setting {
            key,
            values,
            origin,
        }: &Setting,
    ) -> Result<(), ConfigError> {
        let fail = |m: &str| invalid(&key.name, Some(origin.clone()), m);
        let value = read(&key.kind, values).map_err(|m| fail(&m))?;
        if self.tables && key.names_queue() {
            let message =
                "--queue/--route cannot be combined with [[queue]] tables in the config file";
            return Err(invalid("queue", Some(origin.clone()), message));
        }
        if key.scope != Scope::Queue {
            self.top.insert(key.name.clone(), value.clone());
            self.origins.0.insert(key.name.clone(), origin.clone());
        }
        if key.scope != Scope::Global {
            for (i, queue) in self.queues.iter_mut().enumerate() {
                queue.insert(key.name.clone(), value.clone());
                self.origins
                    .0
                    .insert(format!("queue[{i}].{}", key.name), origin.clone());
            }
        }
        Ok(())
    }
}

/// A flag's or variable's text as a value of the key's kind.
fn read(kind: &Kind, values: &[String]) -> Result<Value, String> {
    let one = |kind: &Kind, text: &str| -> Result<Value, String> {
        let text = text.trim();
        let number = |what| format!("`{text}` is not {what}");
        match kind {
            Kind::Bool => match text.to_ascii_lowercase().as_str() {
                "1" | "true" => Ok(Value::Boolean(true)),
                "0" | "false" => Ok(Value::Boolean(false)),
                _ => Err(number("a boolean: use 1, 0, true or false")),
            },
            Kind::Integer => text
                .parse()
                .map(Value::Integer)
                .map_err(|_| number("a whole number")),
            Kind::Float => text
                .parse()
                .map(Value::Float)
                .map_err(|_| number("a number")),
            Kind::Text | Kind::List(_) => Ok(Value::String(text.to_string())),
        }
    };
    match kind {
        Kind::List(item) => (values.iter().flat_map(|v| v.split(',')))
            .filter(|v| !v.trim().is_empty())
            .map(|v| one(item, v))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        _ => one(kind, values.last().map_or("", String::as_str)),
    }
}

/// The error for a value serde refused: the key, where the value came from,
/// and serde's reason; a misspelled key is named, with the nearest real one.
fn refused(e: serde_path_to_error::Error<toml::de::Error>, origins: &Origins) -> ConfigError {
    let (key, message) = (e.path().to_string(), e.inner().message());
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return invalid(&key, origins.of(&key), message);
    };
    // serde lists the fields it expected; at the top level the queue keys
    // are allowed too.
    let mut names = rest.split('`').step_by(2);
    let name = names.next().unwrap_or_default();
    let queue_keys = (keys::keys().iter())
        .filter(|_| !key.starts_with("queue["))
        .map(|k| keys::top_level_name(&k.name));
    let nearest = (names.chain(queue_keys))
        .filter(|n| strsim::levenshtein(n, name) <= 2)
        .min_by_key(|n| strsim::levenshtein(n, name))
        .map(String::from);
    let origin = origins.of(&key);
    ConfigError::UnknownKey {
        key,
        origin,
        nearest,
    }
}
