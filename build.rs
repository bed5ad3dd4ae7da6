//! Converts `docs/openapi.yaml`, the one source of the API description, into
//! the JSON that `GET /openapi.json` serves (`$OUT_DIR/openapi.json`). Done
//! here so that a document that does not parse fails the build, and the
//! gateway carries no YAML parser at run time.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

const SOURCE: &str = "docs/openapi.yaml";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let text =
        std::fs::read_to_string(SOURCE).unwrap_or_else(|e| panic!("cannot read {SOURCE}: {e}"));
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{SOURCE} is not valid YAML: {e}"));
    let [doc] = docs.as_slice() else {
        panic!("{SOURCE} must hold exactly one YAML document");
    };
    let json = to_json(doc, "").unwrap_or_else(|e| panic!("{SOURCE}: {e}"));
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("openapi.json");
    let bytes = serde_json::to_vec(&json).expect("a JSON value serialises");
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// YAML 1.2 core schema to JSON. Mapping keys must be scalars and become
/// strings (OpenAPI's status codes are keys); anchors and aliases are refused
/// rather than half-supported.
fn to_json(node: &Yaml, at: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => {
            let f: f64 = text
                .parse()
                .map_err(|_| format!("{at}: `{text}` is not a finite number"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("{at}: `{text}` has no JSON form"))?
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{at}/{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("{at}: unsupported mapping key {other:?}")),
                };
                let value = to_json(v, &format!("{at}/{key}"))?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(format!("{at}: duplicate key `{key}`"));
                }
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err(format!("{at}: YAML aliases are not supported")),
        Yaml::BadValue => return Err(format!("{at}: unreadable value")),
    })
}
