//! The body of `POST /v1/jobs` and `POST /v1/jobs/{id}/items` as JSON or as
//! `multipart/form-data` (API.md "Multipart upload"), both giving the same request.
//!
//! A multipart body is read part by part as it arrives: an `image` part's bytes are kept as
//! they came (no base64 round trip: intake checks them as it checks decoded base64),
//! hashed on the way for idempotency. The `job` part is the JSON body; its `items` may hold `{"file": …}` entries
//! that give a named image part its ids. Parts that cannot be items (an unknown name, a
//! `file` entry naming no part, a part over `intake.max_image_bytes`) become rejected items
//! with a reason naming them, and the rest goes on; intake checks the images as it checks
//! JSON ones.

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::body_limit;
use super::dto::{ItemsRequest, JobRequest};
use super::problem::{is_json, parse_json, ApiBody, ApiError, FieldError};
use super::AppState;
use crate::intake::upload::ids_from_filename;
use crate::intake::{FromPart, ItemInput};

/// A request body that carries items: what a multipart body's parts are added to.
pub trait ItemsBody: DeserializeOwned + Send {
    fn items_mut(&mut self) -> &mut Vec<ItemInput>;
}

impl ItemsBody for JobRequest {
    fn items_mut(&mut self) -> &mut Vec<ItemInput> {
        &mut self.items
    }
}

impl ItemsBody for ItemsRequest {
    fn items_mut(&mut self) -> &mut Vec<ItemInput> {
        &mut self.items
    }
}

/// A job or items body from `application/json` or `multipart/form-data`, with what
/// idempotency compares: the JSON body's bytes, or a digest of the multipart parts in order
/// (names, filenames, bytes), which does not depend on the boundary a retry changes.
pub struct Upload<T> {
    pub body: T,
    pub fingerprint: Bytes,
}

impl<T: ItemsBody> FromRequest<AppState> for Upload<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if is_multipart(req.headers()) {
            let limit = body_limit::limit_of(&req);
            let multipart = Multipart::from_request(req, state)
                .await
                .map_err(|e| body_error(format!("not multipart/form-data: {}", e.body_text())))?;
            let max_image = state.app.settings.intake.max_image_bytes;
            return read_multipart(multipart, limit, max_image).await;
        }
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: application/json or multipart/form-data".into(),
            ));
        }
        let ApiBody(bytes) = ApiBody::from_request(req, state).await?;
        Ok(Upload {
            body: parse_json(&bytes)?,
            fingerprint: bytes,
        })
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.type_() == mime::MULTIPART && m.subtype() == mime::FORM_DATA)
}

/// A 400 about the body as a whole.
fn body_error(message: String) -> ApiError {
    field_error("body", message)
}

fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::BadRequest {
        detail: format!("{field}: {message}"),
        errors: vec![FieldError {
            field: field.to_string(),
            message,
        }],
    }
}

fn read_error(err: MultipartError, limit: usize) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        body_error(format!(
            "could not read the multipart body: {}",
            err.body_text()
        ))
    }
}

/// One part of a multipart body, read.
struct Part {
    /// Its place among all the parts, from 1.
    ordinal: usize,
    filename: Option<String>,
    kind: PartKind,
}

enum PartKind {
    Image { bytes: Bytes },
    TooLarge { bytes: u64, limit: usize },
    Unknown { name: String },
}

/// Where a part's bytes go as they arrive.
enum Sink {
    Job(Vec<u8>),
    Image(Collector),
    Discard,
}

impl Sink {
    fn push(&mut self, chunk: &[u8]) {
        match self {
            Sink::Job(buf) => buf.extend_from_slice(chunk),
            Sink::Image(collector) => collector.push(chunk),
            Sink::Discard => {}
        }
    }
}

/// Gathers an image part's bytes chunk by chunk; past `limit` bytes it keeps nothing (and
/// only counts).
struct Collector {
    bytes: Vec<u8>,
    seen: u64,
    limit: usize,
}

impl Collector {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            seen: 0,
            limit,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit as u64 {
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    fn finish(self) -> PartKind {
        if self.seen > self.limit as u64 {
            return PartKind::TooLarge {
                bytes: self.seen,
                limit: self.limit,
            };
        }
        let mut bytes = self.bytes;
        bytes.shrink_to_fit();
        PartKind::Image {
            bytes: Bytes::from(bytes),
        }
    }
}

/// Adds a length-prefixed value to the digest, so no two sequences of parts hash alike.
fn frame(hasher: &mut Sha256, value: &[u8]) {
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

async fn read_multipart<T: ItemsBody>(
    mut multipart: Multipart,
    limit: usize,
    max_image: usize,
) -> Result<Upload<T>, ApiError> {
    let mut hasher = Sha256::new();
    hasher.update(b"batchlens multipart/form-data v1\0");
    let mut job: Option<Vec<u8>> = None;
    let mut parts = Vec::new();
    let mut ordinal = 0;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| read_error(e, limit))?
    {
        ordinal += 1;
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        frame(&mut hasher, name.as_bytes());
        match &filename {
            Some(f) => frame(&mut hasher, f.as_bytes()),
            None => hasher.update(u64::MAX.to_le_bytes()),
        }
        let mut sink = match name.as_str() {
            "job" if job.is_some() => {
                return Err(field_error("job", "given twice; send one job part"))
            }
            "job" => Sink::Job(Vec::new()),
            "image" => Sink::Image(Collector::new(max_image)),
            _ => Sink::Discard,
        };
        let mut length: u64 = 0;
        while let Some(chunk) = field.chunk().await.map_err(|e| read_error(e, limit))? {
            hasher.update(&chunk);
            length += chunk.len() as u64;
            sink.push(&chunk);
        }
        hasher.update(length.to_le_bytes());
        let kind = match sink {
            Sink::Job(bytes) => {
                job = Some(bytes);
                continue;
            }
            Sink::Image(collector) => collector.finish(),
            Sink::Discard => PartKind::Unknown { name },
        };
        parts.push(Part {
            ordinal,
            filename,
            kind,
        });
    }
    let (mut body, entries) = job_part::<T>(job.as_deref())?;
    *body.items_mut() = assemble(entries, parts);
    Ok(Upload {
        body,
        fingerprint: Bytes::copy_from_slice(&hasher.finalize()),
    })
}

/// An entry of `job.items` that gives an image part its ids.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    file: String,
    custom_id: Option<String>,
    post_id: Option<String>,
}

enum Entry {
    Item(Box<ItemInput>),
    File(FileEntry),
}

/// The `job` part: the body without its items, and its `items` entries (JSON items and
/// `file` entries). A part that is not JSON, or does not fit the body, is a 400 naming
/// `job` (or the field in it).
fn job_part<T: ItemsBody>(raw: Option<&[u8]>) -> Result<(T, Vec<Entry>), ApiError> {
    let mut value: Value = match raw {
        None => Value::Object(Default::default()),
        Some(raw) => serde_json::from_slice(raw)
            .map_err(|e| field_error("job", format!("malformed JSON: {e}")))?,
    };
    let Some(object) = value.as_object_mut() else {
        return Err(field_error("job", "must be a JSON object (the job body)"));
    };
    let entries = match object.insert("items".into(), Value::Array(Vec::new())) {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(field_error("job.items", "must be an array")),
    };
    let body = from_value(value, "job")?;
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("job.items[{i}]");
            if entry.get("file").is_some() {
                from_value(entry, &at).map(Entry::File)
            } else {
                from_value(entry, &at).map(|item| Entry::Item(Box::new(item)))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((body, entries))
}

/// Deserializes `value`, a 400 naming the field under `at` when it does not fit.
fn from_value<V: DeserializeOwned>(value: Value, at: &str) -> Result<V, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            at.to_string()
        } else {
            format!("{at}.{path}")
        };
        field_error(&field, err.into_inner().to_string())
    })
}

/// The items in order: `job.items` as given (a `file` entry takes the image part it names),
/// then the image parts no entry named and the parts that are not images, as sent.
fn assemble(entries: Vec<Entry>, parts: Vec<Part>) -> Vec<ItemInput> {
    let mut parts: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
    let mut items = Vec::with_capacity(entries.len() + parts.len());
    for (i, entry) in entries.into_iter().enumerate() {
        match entry {
            Entry::Item(input) => items.push(*input),
            Entry::File(entry) => match claim(&mut parts, &entry.file) {
                Some(part) => items.push(part.into_item(entry.custom_id, entry.post_id)),
                None => items.push(ItemInput {
                    part: Some(FromPart {
                        label: format!("job.items[{i}].file"),
                        refused: Some(format!("no image part has the filename {:?}", entry.file)),
                        ..FromPart::default()
                    }),
                    custom_id: entry.custom_id,
                    post_id: entry.post_id,
                    ..ItemInput::default()
                }),
            },
        }
    }
    items.extend(
        parts
            .into_iter()
            .flatten()
            .map(|part| part.into_item(None, None)),
    );
    items
}

/// Takes the first image part whose filename is `file`; failing that, the first whose
/// base name is `file`'s (a client that sends base names only, or full paths).
fn claim(parts: &mut [Option<Part>], file: &str) -> Option<Part> {
    let base = |name: &str| name.rsplit(['/', '\\']).next().unwrap_or(name).to_string();
    let wanted = base(file);
    let image = |p: &Part| !matches!(p.kind, PartKind::Unknown { .. });
    let at = |matches: &dyn Fn(&str) -> bool| {
        parts.iter().position(|p| {
            p.as_ref()
                .is_some_and(|p| image(p) && p.filename.as_deref().is_some_and(matches))
        })
    };
    let found = at(&|name| name == file).or_else(|| at(&|name| base(name) == wanted));
    found.and_then(|i| parts[i].take())
}

impl Part {
    /// The part as an item; `custom_id` and `post_id`, when given, override what the
    /// filename gives.
    fn into_item(self, custom_id: Option<String>, post_id: Option<String>) -> ItemInput {
        let (id_stem, folder) = self
            .filename
            .as_deref()
            .map(ids_from_filename)
            .unwrap_or_default();
        let shown = match &self.filename {
            Some(f) => format!("{f:?}"),
            None => self.ordinal.to_string(),
        };
        let mut item = ItemInput {
            custom_id,
            post_id: post_id.or(folder),
            ..ItemInput::default()
        };
        let mut from = FromPart {
            label: format!("image part {shown}"),
            id_stem,
            refused: None,
        };
        match self.kind {
            PartKind::Image { bytes } => item.image_bytes = Some(bytes),
            PartKind::TooLarge { bytes, limit } => {
                from.refused = Some(format!(
                    "{bytes} bytes, over the {limit}-byte limit of an image (intake.max_image_bytes)"
                ));
            }
            PartKind::Unknown { name } => {
                from.label = format!("part {name:?}");
                from.refused = Some(
                    "not a part this endpoint takes: send each image as a part named \"image\" \
                     and the job body as a part named \"job\""
                        .into(),
                );
            }
        }
        item.part = Some(from);
        item
    }
}

/// `POST /v1/jobs` as `multipart/form-data` (what `curl -F` sends).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobUpload {
    /// The job body as JSON (`-F 'job={…};type=application/json'`), optional. Its `items`
    /// may hold JSON items as usual and entries `{"file": "<filename>", "custom_id": …,
    /// "post_id": …}` that give the image part with that filename its ids.
    job: Option<JobRequest>,
    /// One part per image (PNG, JPEG, WEBP or non-animated GIF; the bytes decide the type,
    /// not the part's Content-Type). Without a `job.items` entry an image's `custom_id` is
    /// its filename without extension, folders joined by `:` (`p7/look3.jpg` → `p7:look3`,
    /// other characters than `A-Z a-z 0-9 _ . : -` as `_`, made unique in the job with
    /// `-2`, `-3`…) and its `post_id` the filename's first folder (`p7`).
    #[schema(value_type = Vec<String>, format = Binary, required = false)]
    image: Vec<Vec<u8>>,
}

/// `POST /v1/jobs/{id}/items` as `multipart/form-data`: the same parts as a job upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ItemsUpload {
    /// The items body as JSON (`{"items": […]}`), optional; its `items` may hold `file`
    /// entries as in a job upload.
    job: Option<ItemsRequest>,
    /// One part per image, named as in a job upload.
    #[schema(value_type = Vec<String>, format = Binary, required = false)]
    image: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(data: &[u8], piece: usize, limit: usize) -> PartKind {
        let mut collector = Collector::new(limit);
        for chunk in data.chunks(piece.max(1)) {
            collector.push(chunk);
        }
        collector.finish()
    }

    #[test]
    fn chunks_of_any_size_are_kept_as_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [0, 1, 2, 3, 998, 1000] {
            for piece in [1, 2, 3, 7, 64, 1000] {
                let PartKind::Image { bytes } = collected(&data[..len], piece, 2000) else {
                    panic!("under the limit");
                };
                assert_eq!(&bytes[..], &data[..len], "{len} by {piece}");
            }
        }
    }

    #[test]
    fn the_limit_counts_every_byte() {
        let png = [7u8; 48];
        assert!(matches!(
            collected(&png, 5, 47),
            PartKind::TooLarge {
                bytes: 48,
                limit: 47
            }
        ));
        assert!(matches!(collected(&png, 5, 48), PartKind::Image { .. }));
    }

    fn image_part(ordinal: usize, filename: &str) -> Part {
        Part {
            ordinal,
            filename: Some(filename.to_string()),
            kind: PartKind::Image {
                bytes: Bytes::from(format!("part-{ordinal}")),
            },
        }
    }

    #[test]
    fn entries_name_parts_by_filename_or_base_name_and_the_rest_follow() {
        let parts = vec![
            image_part(2, "p1/a.png"),
            image_part(3, "b.png"),
            Part {
                ordinal: 4,
                filename: None,
                kind: PartKind::Unknown {
                    name: "photo".into(),
                },
            },
            image_part(5, "p2/c.png"),
        ];
        let entries = vec![
            Entry::File(FileEntry {
                file: "p9/b.png".into(),
                custom_id: Some("bee".into()),
                post_id: None,
            }),
            Entry::Item(Box::new(ItemInput {
                image_url: Some("https://x.test/u.jpg".into()),
                ..ItemInput::default()
            })),
            Entry::File(FileEntry {
                file: "missing.png".into(),
                custom_id: None,
                post_id: Some("p3".into()),
            }),
            Entry::File(FileEntry {
                file: "p2/c.png".into(),
                custom_id: None,
                post_id: Some("mine".into()),
            }),
        ];
        let items = assemble(entries, parts);
        let got: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.custom_id.as_deref(),
                    i.post_id.as_deref(),
                    i.image_bytes.as_deref(),
                    i.part.as_ref().map(|p| p.label.as_str()),
                    i.part.as_ref().and_then(|p| p.id_stem.as_deref()),
                    i.part.as_ref().is_some_and(|p| p.refused.is_some()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some("bee"),
                    None,
                    Some(b"part-3".as_slice()),
                    Some("image part \"b.png\""),
                    Some("b"),
                    false
                ),
                (None, None, None, None, None, false),
                (
                    None,
                    Some("p3"),
                    None,
                    Some("job.items[2].file"),
                    None,
                    true
                ),
                (
                    None,
                    Some("mine"),
                    Some(b"part-5".as_slice()),
                    Some("image part \"p2/c.png\""),
                    Some("p2:c"),
                    false
                ),
                (
                    None,
                    Some("p1"),
                    Some(b"part-2".as_slice()),
                    Some("image part \"p1/a.png\""),
                    Some("p1:a"),
                    false
                ),
                (None, None, None, Some("part \"photo\""), None, true),
            ]
        );
    }

    #[test]
    fn a_job_part_that_is_not_a_job_names_job() {
        let err = |raw: &[u8]| match job_part::<JobRequest>(Some(raw)) {
            Err(ApiError::BadRequest { errors, .. }) => errors[0].field.clone(),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted {}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(err(b"{\"name\": "), "job");
        assert_eq!(err(b"[1]"), "job");
        assert_eq!(err(br#"{"mode": "fast"}"#), "job.mode");
        assert_eq!(err(br#"{"items": 5}"#), "job.items");
        assert_eq!(
            err(br#"{"items": [{"file": "a.png", "x": 1}]}"#),
            "job.items[0].x"
        );
        assert_eq!(
            err(br#"{"items": [{"image_url": 5}]}"#),
            "job.items[0].image_url"
        );
        let (job, entries) =
            job_part::<JobRequest>(Some(br#"{"name": "n", "open": true}"#)).unwrap();
        assert_eq!(job.name.as_deref(), Some("n"));
        assert!(job.open && entries.is_empty());
        let (items, _) = job_part::<ItemsRequest>(None).unwrap();
        assert!(items.items.is_empty());
    }
}
