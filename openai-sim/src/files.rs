//! The Files API over the in-memory store: upload, list, retrieve, delete, content.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::ids;
use crate::state::State;

/// Purposes a client may upload with (`batch_output` is the simulator's own).
pub const UPLOAD_PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];
/// Batch input and output files expire after 30 days unless told otherwise.
pub const BATCH_FILE_TTL_S: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug)]
pub struct FileRecord {
    pub id: String,
    /// Creation order, to break `created_at` ties in listings.
    pub seq: u64,
    pub filename: String,
    pub purpose: String,
    pub data: Bytes,
    pub created_ms: u64,
    pub expires_at: Option<u64>,
}

impl FileRecord {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "file",
            "bytes": self.data.len(),
            "created_at": self.created_ms / 1000,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        });
        if let Some(e) = self.expires_at {
            v["expires_at"] = json!(e);
        }
        v
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|e| e * 1000 <= now_ms)
    }
}

/// A parsed `POST /v1/files` form.
#[derive(Debug, Default)]
pub struct Upload {
    pub filename: Option<String>,
    pub data: Option<Bytes>,
    pub purpose: Option<String>,
    pub expires_anchor: Option<String>,
    pub expires_seconds: Option<String>,
}

fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}")).param("id")
}

impl State {
    pub fn upload_file(&mut self, up: Upload, now: u64) -> Result<Value, ApiError> {
        let data = up.data.ok_or_else(|| ApiError::missing("file"))?;
        let purpose = up.purpose.ok_or_else(|| ApiError::missing("purpose"))?;
        if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
            return Err(ApiError::invalid_value(
                "purpose",
                &purpose,
                UPLOAD_PURPOSES,
            ));
        }
        let filename = up.filename.unwrap_or_else(|| "upload".into());
        if purpose == "batch" && !filename.ends_with(".jsonl") {
            return Err(ApiError::invalid(format!(
                "Invalid file format for Batch API. Must be .jsonl, but got '{filename}'."
            ))
            .param("file")
            .code("invalid_file_format"));
        }
        let ttl = match (up.expires_anchor.as_deref(), up.expires_seconds.as_deref()) {
            (None, None) => (purpose == "batch").then_some(BATCH_FILE_TTL_S),
            (Some("created_at"), Some(s)) => Some(expiry_seconds(s, "expires_after[seconds]")?),
            (Some(a), Some(_)) => {
                return Err(ApiError::invalid_value(
                    "expires_after[anchor]",
                    a,
                    &["created_at"],
                ))
            }
            (None, _) => return Err(ApiError::missing("expires_after[anchor]")),
            (_, None) => return Err(ApiError::missing("expires_after[seconds]")),
        };
        self.stats.files_uploaded += 1;
        self.stats.bytes_uploaded += data.len() as u64;
        let rec = self.add_file(filename, purpose, data, now, ttl);
        Ok(rec)
    }

    /// Stores a file and returns its JSON; used for uploads and batch output files.
    pub fn add_file(
        &mut self,
        filename: String,
        purpose: String,
        data: Bytes,
        now: u64,
        ttl_s: Option<u64>,
    ) -> Value {
        self.file_seq += 1;
        let rec = FileRecord {
            id: ids::file_id(),
            seq: self.file_seq,
            filename,
            purpose,
            data,
            created_ms: now,
            expires_at: ttl_s.map(|t| now / 1000 + t),
        };
        let json = rec.to_json();
        self.files.insert(rec.id.clone(), rec);
        json
    }

    pub fn file(&self, id: &str, now: u64) -> Result<&FileRecord, ApiError> {
        self.files
            .get(id)
            .filter(|f| !f.expired(now))
            .ok_or_else(|| no_such_file(id))
    }

    pub fn list_files(
        &self,
        purpose: Option<&str>,
        limit: Option<&str>,
        order: Option<&str>,
        after: Option<&str>,
        now: u64,
    ) -> Result<Value, ApiError> {
        let limit = parse_limit(limit, 10_000, 10_000)?;
        let desc = match order {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(o) => return Err(ApiError::invalid_value("order", o, &["asc", "desc"])),
        };
        let mut files: Vec<&FileRecord> = self
            .files
            .values()
            .filter(|f| !f.expired(now) && purpose.is_none_or(|p| f.purpose == p))
            .collect();
        files.sort_by_key(|f| (f.created_ms / 1000, f.seq));
        if desc {
            files.reverse();
        }
        if let Some(after) = after {
            let pos = files.iter().position(|f| f.id == after);
            files = match pos {
                Some(p) => files.split_off(p + 1),
                None => Vec::new(),
            };
        }
        let has_more = files.len() > limit;
        files.truncate(limit);
        let data: Vec<Value> = files.iter().map(|f| f.to_json()).collect();
        Ok(json!({
            "object": "list",
            "data": data,
            "first_id": files.first().map(|f| f.id.clone()),
            "last_id": files.last().map(|f| f.id.clone()),
            "has_more": has_more,
        }))
    }

    pub fn delete_file(&mut self, id: &str, now: u64) -> Result<Value, ApiError> {
        self.file(id, now)?;
        self.files.remove(id);
        self.stats.files_deleted += 1;
        Ok(json!({"id": id, "object": "file", "deleted": true}))
    }
}

fn expiry_seconds(s: &str, param: &str) -> Result<u64, ApiError> {
    match s.trim().parse::<u64>() {
        Ok(n) if (3600..=2_592_000).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "Invalid '{param}': expected an integer between 3600 and 2592000, but got '{s}'."
        ))
        .param(param)
        .code("invalid_value")),
    }
}

/// `output_expires_after.seconds` of a batch, same bounds as uploads.
pub fn check_expiry_seconds(v: &Value, param: &str) -> Result<u64, ApiError> {
    expiry_seconds(&v.to_string(), param)
}

/// A `limit` query parameter within `1..=max`.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!(
                "Invalid 'limit': expected an integer between 1 and {max}, but got '{s}'."
            ))
            .param("limit")
            .code("invalid_value")),
        },
    }
}
