//! Analyzers: the built-in fashion analyzer, OpenAI's strict structured-output rules for
//! any analyzer schema, validation of model answers, and the chat request body sent for
//! one image. Pure functions: no HTTP, no storage.

use serde_json::{json, Map, Value};

use crate::domain::{Analyzer, Detail, ItemError};

const FASHION_PROMPT: &str = "\
You are a fashion analyst tagging product and street-style photos for a fashion catalog.
Look at the image and describe the main fashion item: the most prominent garment, shoe or \
accessory (when a person wears a full outfit, the most prominent piece).
Rules:
- Answer only with JSON that fits the schema; fill every field.
- category: the closest value; \"other\" when no fashion item is visible.
- subcategory: the specific type in a few lowercase words, e.g. \"midi wrap dress\", \
\"chelsea boots\", \"denim jacket\".
- colors: every clearly visible color of the item as a simple lowercase name (black, white, \
grey, navy, blue, beige, brown, red, pink, green, yellow, orange, purple, gold, silver, \
multicolor), most dominant first. primary_color is the first of them.
- material: the most likely main material in one or two lowercase words (cotton, denim, \
leather, wool, silk, linen, knit, polyester, suede…), or \"unknown\" when it cannot be seen.
- pattern, style, season, occasion, gender: the closest value of each list; season is \
\"all-season\" when the item suits any weather.
- description: one factual sentence of at most 25 words about the item.
- Describe only what is visible; never guess brands, prices or text you cannot read.";

/// The built-in analyzer: fashion attributes of the main item in a photo.
pub fn fashion() -> Analyzer {
    let text = |description: &str| json!({"type": "string", "description": description});
    let one_of = |values: &[&str], description: &str| json!({"type": "string", "enum": values, "description": description});
    let properties = json!({
        "category": one_of(
            &["tops", "bottoms", "dresses", "outerwear", "suits", "knitwear", "activewear",
              "swimwear", "lingerie", "sleepwear", "footwear", "bags", "accessories",
              "jewelry", "headwear", "eyewear", "other"],
            "The main item's category."),
        "subcategory": text("The specific type of item, e.g. \"midi wrap dress\"."),
        "colors": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Visible colors, lowercase simple names, most dominant first."
        },
        "primary_color": text("The dominant color, the first of colors."),
        "pattern": one_of(
            &["solid", "striped", "checked", "plaid", "floral", "polka-dot", "animal-print",
              "geometric", "abstract", "graphic-print", "camouflage", "paisley", "tie-dye",
              "colorblock", "other"],
            "The dominant pattern."),
        "material": text("The most likely main material, or \"unknown\"."),
        "style": one_of(
            &["casual", "formal", "business", "streetwear", "sporty", "bohemian", "vintage",
              "minimalist", "elegant", "preppy", "edgy", "romantic", "other"],
            "The overall style."),
        "season": one_of(
            &["spring", "summer", "autumn", "winter", "all-season"],
            "The season the item suits best."),
        "occasion": one_of(
            &["everyday", "work", "party", "formal-event", "wedding", "sport", "beach",
              "lounge", "travel", "other"],
            "The occasion the item suits best."),
        "gender": one_of(&["womens", "mens", "unisex", "kids"], "Who the item is made for."),
        "description": text("One factual sentence of at most 25 words.")
    });
    let required: Vec<&String> = properties.as_object().expect("an object").keys().collect();
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    });
    Analyzer {
        prompt: FASHION_PROMPT.to_string(),
        schema,
    }
}

/// A way a schema breaks OpenAI's strict structured-output rules, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {rule}")]
pub struct SchemaRuleError {
    /// Where, as `$.properties.colors.items`.
    pub path: String,
    pub rule: String,
}

/// Keywords OpenAI documents for strict mode; anything else makes it refuse the schema.
const SUPPORTED_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
    "description",
    "title",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
];
const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "object", "array", "null",
];
/// Nested object levels OpenAI allows (the root object is level 1).
pub const MAX_OBJECT_DEPTH: usize = 10;
/// Object properties OpenAI allows across the whole schema.
pub const MAX_TOTAL_PROPERTIES: usize = 5000;

/// Checks `schema` against OpenAI's strict structured-outputs rules, so a bad analyzer
/// is refused at submit rather than failing every request of a batch.
///
/// Object depth counts object schemas from the root (level 1) down through `properties`
/// and `items`; `anyOf` branches sit at their parent's level and `$defs` entries start
/// one level below the root.
pub fn check_strict_schema(schema: &Value) -> Result<(), SchemaRuleError> {
    let root = schema.as_object().ok_or_else(|| SchemaRuleError {
        path: "$".into(),
        rule: "the schema must be a JSON object".into(),
    })?;
    if root.contains_key("anyOf") {
        return Err(SchemaRuleError {
            path: "$".into(),
            rule: "the root must not be anyOf; wrap the choices in an object property".into(),
        });
    }
    if root.get("type") != Some(&json!("object")) {
        return Err(SchemaRuleError {
            path: "$".into(),
            rule: "the root must have \"type\": \"object\"".into(),
        });
    }
    let mut walk = Walk {
        root: schema,
        properties: 0,
    };
    walk.node(schema, "$", 0)?;
    for key in ["$defs", "definitions"] {
        let Some(defs) = root.get(key) else { continue };
        let defs = defs.as_object().ok_or_else(|| SchemaRuleError {
            path: format!("$.{key}"),
            rule: "must be an object of schemas".into(),
        })?;
        for (name, def) in defs {
            walk.node(def, &format!("$.{key}.{name}"), 1)?;
        }
    }
    Ok(())
}

struct Walk<'a> {
    root: &'a Value,
    properties: usize,
}

impl Walk<'_> {
    /// Checks one schema node; `depth` is the number of object schemas above it.
    fn node(&mut self, node: &Value, path: &str, depth: usize) -> Result<(), SchemaRuleError> {
        let err = |rule: String| SchemaRuleError {
            path: path.to_string(),
            rule,
        };
        let map = node
            .as_object()
            .ok_or_else(|| err("a schema must be a JSON object".into()))?;
        if let Some(key) = map
            .keys()
            .find(|k| !SUPPORTED_KEYWORDS.contains(&k.as_str()))
        {
            return Err(err(format!(
                "keyword \"{key}\" is not supported in strict mode"
            )));
        }
        if depth > 0 && (map.contains_key("$defs") || map.contains_key("definitions")) {
            return Err(err("$defs belong at the root only".into()));
        }

        let types = self.types(map, &err)?;
        let is_object = types.contains(&"object") || map.contains_key("properties");
        let depth = if is_object {
            let d = depth + 1;
            if d > MAX_OBJECT_DEPTH {
                return Err(err(format!(
                    "objects nested {d} levels deep, over OpenAI's limit of {MAX_OBJECT_DEPTH}"
                )));
            }
            self.object(map, path, d)?;
            d
        } else {
            depth
        };

        if let Some(items) = map.get("items") {
            if items.is_array() {
                return Err(err(
                    "items must be one schema (tuple arrays are not supported)".into(),
                ));
            }
            self.node(items, &format!("{path}.items"), depth)?;
        }
        if let Some(any_of) = map.get("anyOf") {
            let branches = any_of
                .as_array()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| err("anyOf must be a non-empty array of schemas".into()))?;
            for (i, branch) in branches.iter().enumerate() {
                // A branch describes the same value, so it sits at the parent's level.
                let before = if is_object { depth - 1 } else { depth };
                self.node(branch, &format!("{path}.anyOf[{i}]"), before)?;
            }
        }
        if let Some(e) = map.get("enum") {
            if e.as_array().is_none_or(|v| v.is_empty()) {
                return Err(err("enum must be a non-empty array".into()));
            }
        }
        if let Some(r) = map.get("$ref") {
            self.reference(r, &err)?;
        }
        Ok(())
    }

    fn types<'v>(
        &self,
        map: &'v Map<String, Value>,
        err: &impl Fn(String) -> SchemaRuleError,
    ) -> Result<Vec<&'v str>, SchemaRuleError> {
        let names: Vec<&Value> = match map.get("type") {
            None => return Ok(Vec::new()),
            Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
            Some(one) => vec![one],
        };
        names
            .into_iter()
            .map(|t| match t.as_str() {
                Some(s) if TYPES.contains(&s) => Ok(s),
                _ => Err(err(format!("type {t} is not one of {}", TYPES.join(", ")))),
            })
            .collect()
    }

    fn object(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), SchemaRuleError> {
        let err = |rule: String| SchemaRuleError {
            path: path.to_string(),
            rule,
        };
        if map.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Err(err("additionalProperties must be false".into()));
        }
        let empty = Map::new();
        let properties = match map.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(err("properties must be an object".into())),
        };
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| err("required must list property names".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("required must be an array".into())),
        };
        if let Some(missing) = properties.keys().find(|k| !required.contains(&k.as_str())) {
            return Err(err(format!(
                "required must list every property; \"{missing}\" is missing \
                 (make it nullable with \"type\": [\"…\", \"null\"] to keep it optional)"
            )));
        }
        if let Some(unknown) = required.iter().find(|r| !properties.contains_key(**r)) {
            return Err(err(format!(
                "required lists \"{unknown}\", which is not in properties"
            )));
        }
        self.properties += properties.len();
        if self.properties > MAX_TOTAL_PROPERTIES {
            return Err(err(format!(
                "more than {MAX_TOTAL_PROPERTIES} properties in the schema, over OpenAI's limit"
            )));
        }
        for (name, sub) in properties {
            self.node(sub, &format!("{path}.properties.{name}"), depth)?;
        }
        Ok(())
    }

    fn reference(
        &self,
        r: &Value,
        err: &impl Fn(String) -> SchemaRuleError,
    ) -> Result<(), SchemaRuleError> {
        let r = r
            .as_str()
            .ok_or_else(|| err("$ref must be a string".into()))?;
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(err(format!(
                "$ref \"{r}\" must point inside the schema (start with #)"
            )));
        };
        if self.root.pointer(pointer).is_none() {
            return Err(err(format!("$ref \"{r}\" points to nothing")));
        }
        Ok(())
    }
}

/// A compiled analyzer schema that model answers are checked against.
pub struct OutputValidator {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for OutputValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputValidator").finish_non_exhaustive()
    }
}

impl OutputValidator {
    /// Compiles `schema` once, to check many answers.
    pub fn new(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(|validator| Self { validator })
            .map_err(|e| format!("the schema does not compile: {e}"))
    }

    /// Ok when `value` fits the schema; else the first few problems, short.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        const SHOWN: usize = 3;
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut shown = Vec::new();
        let mut more = 0usize;
        for e in self.validator.iter_errors(value) {
            if shown.len() < SHOWN {
                shown.push(format!(
                    "{}: {}",
                    dollar_path(e.instance_path.as_str()),
                    clip(&e.to_string(), 160)
                ));
            } else {
                more += 1;
            }
        }
        if shown.is_empty() {
            return Ok(());
        }
        let mut msg = shown.join("; ");
        if more > 0 {
            msg.push_str(&format!(" (and {more} more)"));
        }
        Err(msg)
    }
}

/// `/colors/0` → `$.colors[0]`.
fn dollar_path(pointer: &str) -> String {
    let mut out = String::from("$");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}…")
    }
}

/// What varies per job in the request for one image.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    pub model: &'a str,
    pub detail: Detail,
    pub max_completion_tokens: u32,
}

/// The `POST /v1/chat/completions` body for one image. The prompt comes before the image
/// so every request of a job shares a cacheable prefix. `max_completion_tokens`, never
/// `max_tokens`, and no `temperature`: reasoning models reject both.
pub fn chat_request_body(analyzer: &Analyzer, image_url: &str, opts: &RequestOptions) -> Value {
    json!({
        "model": opts.model,
        "messages": [{
            "role": "user",
            "content": [
                {"type": "text", "text": analyzer.prompt},
                {"type": "image_url", "image_url": {"url": image_url, "detail": opts.detail.as_str()}}
            ]
        }],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "analysis", "strict": true, "schema": analyzer.schema}
        },
        "max_completion_tokens": opts.max_completion_tokens
    })
}

/// Reads the model's message: a refusal, nothing, or the JSON answer (not yet checked
/// against the schema: see [`OutputValidator`]).
pub fn parse_model_content(
    content: Option<&str>,
    refusal: Option<&str>,
) -> Result<Value, ItemError> {
    if let Some(r) = refusal.map(str::trim).filter(|r| !r.is_empty()) {
        return Err(ItemError {
            code: "refused".into(),
            message: format!("the model refused: {}", clip(r, 300)),
        });
    }
    let Some(text) = content.map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(ItemError {
            code: "empty_output".into(),
            message: "the model returned no content".into(),
        });
    };
    serde_json::from_str(text).map_err(|e| ItemError {
        code: "invalid_output".into(),
        message: format!(
            "the model's answer is not valid JSON ({e}): {}",
            clip(text, 120)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_answer() -> Value {
        json!({
            "category": "dresses",
            "subcategory": "midi wrap dress",
            "colors": ["navy", "white"],
            "primary_color": "navy",
            "pattern": "polka-dot",
            "material": "silk",
            "style": "elegant",
            "season": "summer",
            "occasion": "party",
            "gender": "womens",
            "description": "A navy silk midi wrap dress with white polka dots and short sleeves."
        })
    }

    fn strict_err(schema: Value) -> SchemaRuleError {
        check_strict_schema(&schema).expect_err("the schema should break a rule")
    }

    fn obj(properties: Value) -> Value {
        let required: Vec<String> = properties.as_object().unwrap().keys().cloned().collect();
        json!({"type": "object", "properties": properties, "required": required,
               "additionalProperties": false})
    }

    #[test]
    fn fashion_schema_is_strict_and_validates_a_sample_answer() {
        let a = fashion();
        check_strict_schema(&a.schema).unwrap();
        let v = OutputValidator::new(&a.schema).unwrap();
        v.validate(&sample_answer()).unwrap();
        let props = a.schema["properties"].as_object().unwrap();
        for key in [
            "category",
            "subcategory",
            "colors",
            "primary_color",
            "pattern",
            "material",
            "style",
            "season",
            "occasion",
            "gender",
            "description",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
        assert_eq!(props.len(), 11);
        assert!(props["season"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("all-season")));
        assert_eq!(
            props["gender"]["enum"],
            json!(["womens", "mens", "unisex", "kids"])
        );
        assert!(a.prompt.contains("JSON"));
    }

    #[test]
    fn validator_reports_short_errors_with_paths() {
        let v = OutputValidator::new(&fashion().schema).unwrap();
        let mut bad = sample_answer();
        bad["colors"] = json!(["navy", 5]);
        bad["gender"] = json!("alien");
        bad["extra"] = json!(1);
        let msg = v.validate(&bad).unwrap_err();
        assert!(msg.contains("$.colors[1]"), "{msg}");
        assert!(msg.contains("$.gender"), "{msg}");
        assert!(msg.contains("extra"), "{msg}");

        let mut missing = sample_answer();
        missing.as_object_mut().unwrap().remove("material");
        assert!(v.validate(&missing).unwrap_err().contains("material"));
    }

    #[test]
    fn validator_caps_the_number_of_errors_shown() {
        let v = OutputValidator::new(&fashion().schema).unwrap();
        let msg = v.validate(&json!({})).unwrap_err();
        assert!(msg.contains("more)"), "{msg}");
        assert!(msg.len() < 1000);
    }

    #[test]
    fn a_schema_that_does_not_compile_is_refused() {
        assert!(OutputValidator::new(&json!({"type": 12})).is_err());
    }

    #[test]
    fn root_rules() {
        let e = strict_err(json!({"anyOf": [obj(json!({}))]}));
        assert_eq!(e.path, "$");
        assert!(e.rule.contains("anyOf"));
        let e = strict_err(json!({"type": "array", "items": {"type": "string"}}));
        assert_eq!(e.to_string(), "$: the root must have \"type\": \"object\"");
        assert_eq!(strict_err(json!(true)).path, "$");
    }

    #[test]
    fn every_object_needs_additional_properties_false() {
        let mut s = obj(json!({"a": {"type": "string"}}));
        s.as_object_mut().unwrap().remove("additionalProperties");
        assert_eq!(
            strict_err(s).to_string(),
            "$: additionalProperties must be false"
        );
        let nested = obj(json!({"colors": {"type": "array", "items":
            {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
             "additionalProperties": true}}}));
        let e = strict_err(nested);
        assert_eq!(e.path, "$.properties.colors.items");
        assert_eq!(e.rule, "additionalProperties must be false");
    }

    #[test]
    fn every_property_must_be_required() {
        let s = json!({"type": "object", "properties": {"a": {"type": "string"},
            "b": {"type": "string"}}, "required": ["a"], "additionalProperties": false});
        let e = strict_err(s);
        assert_eq!(e.path, "$");
        assert!(e.rule.contains("\"b\" is missing"), "{}", e.rule);
        let s = json!({"type": "object", "properties": {"a": {"type": "string"}},
            "required": ["a", "z"], "additionalProperties": false});
        assert!(strict_err(s).rule.contains("\"z\""));
    }

    #[test]
    fn unsupported_keywords_are_named() {
        let e = strict_err(obj(json!({"size": {"type": "string", "minLength": 2}})));
        assert_eq!(e.path, "$.properties.size");
        assert_eq!(
            e.rule,
            "keyword \"minLength\" is not supported in strict mode"
        );
        let e = strict_err(obj(json!({"x": {"oneOf": [{"type": "string"}]}})));
        assert!(e.rule.contains("oneOf"));
        let e = strict_err(obj(json!({"x": {"type": "string", "default": "a"}})));
        assert!(e.rule.contains("default"));
    }

    #[test]
    fn documented_constraints_anyof_and_refs_are_allowed() {
        let s = json!({
            "type": "object",
            "title": "t",
            "description": "d",
            "properties": {
                "n": {"type": "number", "minimum": 0, "maximum": 10, "exclusiveMinimum": -1,
                      "exclusiveMaximum": 11, "multipleOf": 0.5},
                "s": {"type": "string", "pattern": "^[a-z]+$", "format": "date"},
                "l": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "o": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/thing"}]},
                "k": {"const": "fixed"},
                "e": {"type": ["string", "null"], "enum": ["a", "b", null]},
                "r": {"$ref": "#"}
            },
            "required": ["n", "s", "l", "o", "k", "e", "r"],
            "additionalProperties": false,
            "$defs": {"thing": obj(json!({"v": {"type": "integer"}}))},
            "definitions": {"other": {"type": "string"}}
        });
        check_strict_schema(&s).unwrap();
        OutputValidator::new(&s).unwrap();
    }

    #[test]
    fn defs_are_checked_too() {
        let s = json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/bad"}},
            "required": ["x"], "additionalProperties": false,
            "$defs": {"bad": {"type": "object", "properties": {}}}});
        let e = strict_err(s);
        assert_eq!(e.path, "$.$defs.bad");
        assert_eq!(e.rule, "additionalProperties must be false");
    }

    #[test]
    fn anyof_branches_are_checked_with_their_path() {
        let s = obj(json!({"x": {"anyOf": [{"type": "string"}, {"type": "object"}]}}));
        let e = strict_err(s);
        assert_eq!(e.path, "$.properties.x.anyOf[1]");
    }

    #[test]
    fn refs_must_resolve_inside_the_schema() {
        let e = strict_err(obj(json!({"x": {"$ref": "#/$defs/nothing"}})));
        assert_eq!(e.path, "$.properties.x");
        assert!(e.rule.contains("points to nothing"));
        let e = strict_err(obj(json!({"x": {"$ref": "https://e.com/s.json"}})));
        assert!(e.rule.contains("start with #"));
    }

    #[test]
    fn bad_type_names_and_tuple_items_are_refused() {
        let e = strict_err(obj(json!({"x": {"type": "float"}})));
        assert_eq!(e.path, "$.properties.x");
        assert!(e.rule.contains("\"float\""));
        let e = strict_err(obj(
            json!({"x": {"type": "array", "items": [{"type": "string"}]}}),
        ));
        assert!(e.rule.contains("tuple"));
        let e = strict_err(obj(json!({"x": {"type": "string", "enum": []}})));
        assert!(e.rule.contains("enum"));
    }

    fn nested(levels: usize) -> Value {
        let mut s = obj(json!({"leaf": {"type": "string"}}));
        for _ in 1..levels {
            s = obj(json!({"n": s}));
        }
        s
    }

    #[test]
    fn nesting_depth_is_limited_to_ten_object_levels() {
        check_strict_schema(&nested(10)).unwrap();
        let e = strict_err(nested(11));
        assert!(e.rule.contains("11 levels"), "{}", e.rule);
        assert_eq!(e.path, format!("${}", ".properties.n".repeat(10)));
    }

    #[test]
    fn total_properties_are_limited() {
        let many = |n: usize| {
            let props: Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!({"type": "string"})))
                .collect();
            obj(Value::Object(props))
        };
        check_strict_schema(&many(5000)).unwrap();
        let e = strict_err(many(5001));
        assert!(e.rule.contains("5000"), "{}", e.rule);
    }

    #[test]
    fn body_has_prompt_first_and_the_token_cap_under_the_new_name() {
        let a = fashion();
        let body = chat_request_body(
            &a,
            "data:image/png;base64,AAAA",
            &RequestOptions {
                model: "gpt-4o-mini",
                detail: Detail::Low,
                max_completion_tokens: 300,
            },
        );
        assert_eq!(body["model"], "gpt-4o-mini");
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["role"], "user");
        let content = msgs[0]["content"].as_array().unwrap();
        assert_eq!(content[0]["type"], "text");
        assert_eq!(content[0]["text"], a.prompt.as_str());
        assert_eq!(content[1]["type"], "image_url");
        assert_eq!(content[1]["image_url"]["url"], "data:image/png;base64,AAAA");
        assert_eq!(content[1]["image_url"]["detail"], "low");
        assert_eq!(body["response_format"]["type"], "json_schema");
        let js = &body["response_format"]["json_schema"];
        assert_eq!(js["name"], "analysis");
        assert_eq!(js["strict"], true);
        assert_eq!(js["schema"], a.schema);
        assert_eq!(body["max_completion_tokens"], 300);
        let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        assert!(!keys.contains(&"max_tokens".to_string()));
        assert!(!keys.contains(&"temperature".to_string()));
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn parse_model_content_cases() {
        assert_eq!(
            parse_model_content(Some(r#"{"a": 1}"#), None).unwrap(),
            json!({"a": 1})
        );
        let e = parse_model_content(None, Some("I can't help with that.")).unwrap_err();
        assert_eq!(e.code, "refused");
        assert!(e.message.contains("I can't help with that."));
        // A refusal wins even when some content came along.
        assert_eq!(
            parse_model_content(Some("{}"), Some("no"))
                .unwrap_err()
                .code,
            "refused"
        );
        assert_eq!(
            parse_model_content(None, None).unwrap_err().code,
            "empty_output"
        );
        assert_eq!(
            parse_model_content(Some("  \n"), Some(""))
                .unwrap_err()
                .code,
            "empty_output"
        );
        let e = parse_model_content(Some("{\"category\": \"dre"), None).unwrap_err();
        assert_eq!(e.code, "invalid_output");
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn dollar_paths_read_like_the_schema_paths() {
        assert_eq!(dollar_path(""), "$");
        assert_eq!(dollar_path("/colors/0"), "$.colors[0]");
        assert_eq!(dollar_path("/a~1b"), "$.a/b");
    }
}
