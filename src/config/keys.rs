//! The keys of the config tree as flags and environment variables see them,
//! read from the tree's JSON schema: no key is declared a second time for the
//! command line. Field `drain_rate` is flag `--drain-rate` and variable
//! `FLASHGATE_DRAIN_RATE`; its doc comment is the flag's help.

use std::sync::OnceLock;

use serde_json::Value;

use super::{Config, QueueConfig};

/// One settable key.
#[derive(Debug)]
pub struct Key {
    /// Field name in the tree: `drain_rate`.
    pub name: String,
    /// Flag name without dashes: `drain-rate`.
    pub flag: String,
    /// `FLASHGATE_DRAIN_RATE`.
    pub env: String,
    /// The field's doc comment on one line.
    pub help: String,
    /// What the flag's value is called in `--help`: `N`, `DUR`, `URL`...
    pub value_name: String,
    pub kind: Kind,
    pub scope: Scope,
}

/// The type of a key's value, which decides how a flag's text is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `0/1/true/false`; as a flag, a switch.
    Bool,
    Integer,
    Float,
    /// Anything written as a string (durations, sizes, URLs...): checked by
    /// the field's own parser.
    Text,
    /// Comma-separated (a repeated flag adds items).
    List(Box<Kind>),
}

/// Which part of the tree a key sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A process-wide key.
    Global,
    /// A queue key: as a flag or at the top of the file it applies to every queue.
    Queue,
    /// Both (`upstream`: the passthrough target and every queue's default).
    Both,
}

/// A queue's name and routes identify it, so they are never defaults for
/// `[[queue]]` tables; at the top level they are written `queue` and `route`
/// and declare the single queue.
pub const QUEUE_IDENTITY: [(&str, &str); 2] = [("name", "queue"), ("routes", "route")];

impl Key {
    /// Whether this is a queue's name or routes (see [`QUEUE_IDENTITY`]).
    pub fn names_queue(&self) -> bool {
        QUEUE_IDENTITY.iter().any(|(field, _)| *field == self.name)
    }
}

/// Every key, globals first, each sorted by name.
pub fn keys() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let global = schemars::schema_for!(Config);
        let queue = schemars::schema_for!(QueueConfig);
        let mut keys = Vec::new();
        for (name, field) in properties(global.as_value()) {
            let shared = properties(queue.as_value()).any(|(n, _)| n == name);
            // The queues are tables, set through the queue keys.
            if name != "queue" {
                let scope = if shared { Scope::Both } else { Scope::Global };
                keys.push(key(name, field, global.as_value(), scope));
            }
        }
        for (name, field) in properties(queue.as_value()) {
            if !keys.iter().any(|k| k.name == name) {
                keys.push(key(name, field, queue.as_value(), Scope::Queue));
            }
        }
        keys
    })
}

/// The key a flag name stands for.
pub fn by_flag(flag: &str) -> Option<&'static Key> {
    keys().iter().find(|k| k.flag == flag)
}

/// The key at the top level of the file that stands for a queue field.
pub fn top_level_name(field: &str) -> &str {
    QUEUE_IDENTITY
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(field, |(_, top)| top)
}

fn properties(schema: &Value) -> impl Iterator<Item = (&str, &Value)> {
    schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v))
}

fn key(name: &str, field: &Value, root: &Value, scope: Scope) -> Key {
    let flag = top_level_name(name).replace('_', "-");
    // The field's own doc, not that of the type it refers to.
    let description = field["description"].as_str().unwrap_or_default();
    let field = resolve(field, root);
    let kind = kind(field, root);
    let value_name = match (&kind, field["format"].as_str()) {
        (Kind::Bool, _) => "BOOL".into(),
        (Kind::Integer | Kind::Float, _) => "N".into(),
        (Kind::List(_), _) => "LIST".into(),
        (Kind::Text, Some("duration")) => "DUR".into(),
        (Kind::Text, Some(format)) => format.to_uppercase(),
        (Kind::Text, None) => "VALUE".into(),
    };
    Key {
        name: name.to_string(),
        env: format!("FLASHGATE_{}", flag.replace('-', "_").to_uppercase()),
        flag,
        help: description.split_whitespace().collect::<Vec<_>>().join(" "),
        value_name,
        kind,
        scope,
    }
}

/// The schema itself, or what its `$ref` or `Option` wrapper points to.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.trim_start_matches("#/$defs/");
        return resolve(&root["$defs"][name], root);
    }
    if let Some(options) = schema["anyOf"].as_array() {
        if let Some(some) = options.iter().find(|o| o["type"] != "null") {
            return resolve(some, root);
        }
    }
    schema
}

fn kind(schema: &Value, root: &Value) -> Kind {
    let schema = resolve(schema, root);
    let ty = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").cloned(),
        other => Some(other.clone()),
    };
    match ty.as_ref().and_then(Value::as_str) {
        Some("boolean") => Kind::Bool,
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Float,
        Some("array") => Kind::List(Box::new(kind(&schema["items"], root))),
        _ => Kind::Text,
    }
}
