//! Generates a JSON value that validates against a (Structured Outputs) JSON Schema.
//!
//! Covers what strict mode allows and a bit more: `$ref` into the same document, `const`,
//! `enum`, `anyOf`/`oneOf`/`allOf`, type unions (with `"null"`), objects with every property,
//! arrays of 1–3 items within `minItems`/`maxItems` (`uniqueItems` honoured), numeric bounds and
//! `multipleOf`, string lengths and common formats. `pattern` is not interpreted.

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{Map, Number, Value};

const WORDS: &[&str] = &[
    "classic",
    "navy",
    "cotton",
    "relaxed",
    "casual",
    "minimal",
    "vintage",
    "bright",
    "tailored",
    "soft",
    "layered",
    "denim",
    "linen",
    "summer",
    "urban",
    "neutral",
    "bold",
    "striped",
    "oversized",
    "leather",
    "wool",
    "pastel",
    "sporty",
    "elegant",
];

/// Past this depth, recursion picks `null`, empty arrays or no more nesting where allowed.
const DEEP: usize = 12;

/// A value valid for `schema` (whose `$ref`s resolve within `schema` itself).
pub fn generate<R: Rng>(schema: &Value, rng: &mut R) -> Value {
    Gen { root: schema, rng }.value(schema, 0)
}

/// A few plain words, used for free text replies too.
pub fn words<R: Rng>(rng: &mut R, min: usize, max: usize) -> String {
    let n = rng.gen_range(min..=max);
    (0..n)
        .map(|_| *WORDS.choose(rng).expect("non-empty word list"))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Gen<'a, R> {
    root: &'a Value,
    rng: &'a mut R,
}

impl<R: Rng> Gen<'_, R> {
    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        let s = match schema {
            Value::Object(s) => s,
            Value::Bool(false) => return Value::Null,
            _ => return Value::String(words(self.rng, 1, 3)),
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = r
                .strip_prefix('#')
                .and_then(|ptr| self.root.pointer(ptr))
                .cloned()
                .unwrap_or(Value::Bool(true));
            return self.value(&target, depth + 1);
        }
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(options)) = s.get("enum") {
            return options.choose(self.rng).cloned().unwrap_or(Value::Null);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = s.get(key) {
                let branch = self.pick_branch(branches, depth).clone();
                return self.value(&branch, depth + 1);
            }
        }
        if let Some(Value::Array(parts)) = s.get("allOf") {
            let merged = merge_all_of(s, parts);
            return self.value(&merged, depth + 1);
        }
        match s.get("type") {
            Some(Value::Array(types)) => {
                let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
                let ty = self.pick_type(&names, depth);
                self.typed(s, ty, depth)
            }
            Some(Value::String(ty)) => self.typed(s, ty, depth),
            _ if s.contains_key("properties") => self.typed(s, "object", depth),
            _ if s.contains_key("items") || s.contains_key("prefixItems") => {
                self.typed(s, "array", depth)
            }
            _ => self.typed(s, "string", depth),
        }
    }

    /// Prefers a non-null branch, except deep down where `null` ends the recursion.
    fn pick_branch<'b>(&mut self, branches: &'b [Value], depth: usize) -> &'b Value {
        static TRUE: Value = Value::Bool(true);
        let is_null = |b: &Value| b.get("type").and_then(Value::as_str) == Some("null");
        let nulls: Vec<&Value> = branches.iter().filter(|b| is_null(b)).collect();
        let others: Vec<&Value> = branches.iter().filter(|b| !is_null(b)).collect();
        let want_null = !nulls.is_empty() && (depth > DEEP || self.rng.gen_bool(0.15));
        if want_null || others.is_empty() {
            return nulls.first().copied().unwrap_or(&TRUE);
        }
        others.choose(self.rng).copied().unwrap_or(&TRUE)
    }

    fn pick_type<'b>(&mut self, names: &[&'b str], depth: usize) -> &'b str {
        let has_null = names.contains(&"null");
        let others: Vec<&'b str> = names.iter().copied().filter(|t| *t != "null").collect();
        if others.is_empty() || (has_null && (depth > DEEP || self.rng.gen_bool(0.15))) {
            return "null";
        }
        others.choose(self.rng).copied().unwrap_or("null")
    }

    fn typed(&mut self, s: &Map<String, Value>, ty: &str, depth: usize) -> Value {
        match ty {
            "object" => self.object(s, depth),
            "array" => self.array(s, depth),
            "integer" => self.integer(s),
            "number" => self.number(s),
            "boolean" => Value::Bool(self.rng.gen_bool(0.5)),
            "null" => Value::Null,
            _ => Value::String(self.string(s)),
        }
    }

    fn object(&mut self, s: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        if let Some(Value::Object(props)) = s.get("properties") {
            for (k, sub) in props {
                out.insert(k.clone(), self.value(sub, depth + 1));
            }
        }
        if let Some(Value::Array(required)) = s.get("required") {
            for k in required.iter().filter_map(Value::as_str) {
                if !out.contains_key(k) {
                    let extra = match s.get("additionalProperties") {
                        Some(sub @ Value::Object(_)) => self.value(sub, depth + 1),
                        _ => Value::String(words(self.rng, 1, 2)),
                    };
                    out.insert(k.to_string(), extra);
                }
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, s: &Map<String, Value>, depth: usize) -> Value {
        let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = s
            .get("maxItems")
            .and_then(Value::as_u64)
            .map(|m| m as usize)
            .unwrap_or(usize::MAX);
        let wanted = if depth > DEEP {
            min
        } else {
            self.rng.gen_range(1..=3usize).max(min)
        };
        let n = wanted.min(max);
        let unique = s.get("uniqueItems").and_then(Value::as_bool) == Some(true);
        let prefix: Vec<Value> = match s.get("prefixItems") {
            Some(Value::Array(p)) => p.clone(),
            _ => Vec::new(),
        };
        let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
        let mut out: Vec<Value> = Vec::with_capacity(n);
        let mut attempts = 0;
        while out.len() < n.max(prefix.len().min(max)) && attempts < n * 20 + 20 {
            attempts += 1;
            let sub = prefix.get(out.len()).unwrap_or(&items);
            let v = self.value(sub, depth + 1);
            if unique && out.contains(&v) {
                if out.len() >= min {
                    // A closed set (an enum, a boolean) may have fewer distinct values than asked.
                    if attempts > n * 10 {
                        break;
                    }
                }
                continue;
            }
            out.push(v);
        }
        Value::Array(out)
    }

    fn integer(&mut self, s: &Map<String, Value>) -> Value {
        let f = |k: &str| s.get(k).and_then(Value::as_f64);
        let mut lo = f("minimum").map(f64::ceil);
        if let Some(x) = f("exclusiveMinimum") {
            lo = Some(lo.unwrap_or(f64::MIN).max(x.floor() + 1.0));
        }
        let mut hi = f("maximum").map(f64::floor);
        if let Some(x) = f("exclusiveMaximum") {
            hi = Some(hi.unwrap_or(f64::MAX).min(x.ceil() - 1.0));
        }
        let (lo, hi) = bounds(lo, hi, 0.0, 100.0);
        let (lo, hi) = (lo as i64, hi as i64);
        let v = match f("multipleOf").filter(|m| *m >= 1.0).map(|m| m as i64) {
            Some(m) => {
                let (a, b) = (div_ceil_i(lo, m), hi.div_euclid(m));
                if a <= b {
                    self.rng.gen_range(a..=b) * m
                } else {
                    lo
                }
            }
            None => self.rng.gen_range(lo..=hi.max(lo)),
        };
        Value::Number(v.into())
    }

    fn number(&mut self, s: &Map<String, Value>) -> Value {
        let f = |k: &str| s.get(k).and_then(Value::as_f64);
        let ex_lo = f("exclusiveMinimum");
        let ex_hi = f("exclusiveMaximum");
        let lo = match (f("minimum"), ex_lo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hi = match (f("maximum"), ex_hi) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (lo, hi) = bounds(lo, hi, 0.0, 100.0);
        let ok = |v: f64| {
            v >= lo && v <= hi && ex_lo.is_none_or(|x| v > x) && ex_hi.is_none_or(|x| v < x)
        };
        if let Some(m) = f("multipleOf").filter(|m| *m > 0.0) {
            let (a, b) = ((lo / m).ceil() as i64, (hi / m).floor() as i64);
            for _ in 0..10 {
                let k = if a <= b { self.rng.gen_range(a..=b) } else { a };
                let v = k as f64 * m;
                if ok(v) {
                    return num(v);
                }
            }
            return num(a as f64 * m);
        }
        for _ in 0..10 {
            let v = (self.rng.gen_range(lo..=hi) * 100.0).round() / 100.0;
            if ok(v) {
                return num(v);
            }
        }
        num((lo + hi) / 2.0)
    }

    fn string(&mut self, s: &Map<String, Value>) -> String {
        let mut text = match s.get("format").and_then(Value::as_str) {
            Some("date-time") => "2024-05-01T12:30:00Z".to_string(),
            Some("date") => "2024-05-01".to_string(),
            Some("time") => "12:30:00Z".to_string(),
            Some("duration") => "P1D".to_string(),
            Some("email") => "someone@example.com".to_string(),
            Some("hostname") => "example.com".to_string(),
            Some("ipv4") => "192.0.2.1".to_string(),
            Some("ipv6") => "2001:db8::1".to_string(),
            Some("uri") | Some("url") => "https://example.com/item".to_string(),
            Some("uuid") => {
                let b: [u8; 16] = self.rng.gen();
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    u16::from_be_bytes([b[4], b[5]]),
                    u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
                    u16::from_be_bytes([b[8], b[9]]) & 0x0fff,
                    u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
                )
            }
            _ => words(self.rng, 1, 4),
        };
        let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = s
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        while text.chars().count() < min {
            text.push(' ');
            text.push_str(&words(self.rng, 1, 1));
        }
        if let Some(max) = max {
            text = text.chars().take(max).collect();
            text = text.trim_end().to_string();
            while text.chars().count() < min {
                text.push('x');
            }
        }
        text
    }
}

fn num(v: f64) -> Value {
    Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn div_ceil_i(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// A closed range from optional bounds, defaulting to `[def_lo, def_hi]` around what is given.
fn bounds(lo: Option<f64>, hi: Option<f64>, def_lo: f64, def_hi: f64) -> (f64, f64) {
    let width = def_hi - def_lo;
    match (lo, hi) {
        (Some(l), Some(h)) => (l, h.max(l)),
        (Some(l), None) => (l, l + width),
        (None, Some(h)) if h >= def_lo => (def_lo, h),
        (None, Some(h)) => (h - width, h),
        (None, None) => (def_lo, def_hi),
    }
}

fn merge_all_of(s: &Map<String, Value>, parts: &[Value]) -> Value {
    let mut merged = s.clone();
    merged.remove("allOf");
    let mut props = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts.iter().filter_map(Value::as_object) {
        for (k, v) in part {
            match (k.as_str(), v) {
                ("properties", Value::Object(p)) => props.extend(p.clone()),
                ("required", Value::Array(r)) => required.extend(r.iter().cloned()),
                _ => {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    if !props.is_empty() {
        let entry = merged
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(existing) = entry {
            existing.extend(props);
        }
    }
    if !required.is_empty() {
        merged.insert("required".into(), Value::Array(required));
    }
    Value::Object(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    #[test]
    fn object_with_every_property_enum_and_nullable() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["color", "score", "tags", "note", "nested"],
            "properties": {
                "color": {"type": "string", "enum": ["red", "blue"]},
                "score": {"type": "integer", "minimum": 3, "maximum": 5},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                "note": {"type": ["string", "null"]},
                "nested": {"$ref": "#/$defs/n"}
            },
            "$defs": {"n": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}
        });
        for seed in 0..50 {
            let v = generate(&schema, &mut StdRng::seed_from_u64(seed));
            let o = v.as_object().unwrap();
            assert!(["red", "blue"].contains(&o["color"].as_str().unwrap()));
            let score = o["score"].as_i64().unwrap();
            assert!((3..=5).contains(&score));
            assert_eq!(o["tags"].as_array().unwrap().len(), 2);
            assert!(o["note"].is_string() || o["note"].is_null());
            assert!(o["nested"]["ok"].is_boolean());
        }
    }

    #[test]
    fn recursive_schema_terminates() {
        let schema = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
            }}},
            "$ref": "#/$defs/node"
        });
        let v = generate(&schema, &mut StdRng::seed_from_u64(1));
        assert!(v.is_object());
    }

    #[test]
    fn numbers_respect_bounds() {
        let schema = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1});
        for seed in 0..100 {
            let v = generate(&schema, &mut StdRng::seed_from_u64(seed))
                .as_f64()
                .unwrap();
            assert!(v > 0.0 && v <= 1.0, "{v}");
        }
        let schema = json!({"type": "integer", "multipleOf": 5, "minimum": 7, "maximum": 19});
        for seed in 0..20 {
            let v = generate(&schema, &mut StdRng::seed_from_u64(seed))
                .as_i64()
                .unwrap();
            assert!(v == 10 || v == 15, "{v}");
        }
    }
}
