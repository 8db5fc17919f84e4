//! Uploading images in chunks: the chunk planner (each request under the body limit), the
//! Idempotency-Key of a chunk, and the `multipart/form-data` body of API.md ("Multipart
//! upload"): a `job` part whose `items` give each file its ids, then one `image` part per
//! file, streamed from disk (a file is opened when its part is reached).

use futures::TryStreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::walk::ImageFile;
use super::CliError;

/// The default request size: the server's default `server.max_body_bytes` (64 MiB) less
/// 8 MiB of headroom for part headers, the `job` part and proxies that count differently.
pub const DEFAULT_CHUNK_BYTES: u64 = 56 * 1024 * 1024;

/// Chunks in flight by default: two keep the service's cores busy (one chunk's images are
/// checked while the next one's bytes arrive) without holding many chunks in its memory.
pub const DEFAULT_PARALLEL: usize = 2;

/// What a request carries besides its images: the multipart preamble and the `job` part's
/// braces and the closing boundary.
pub const REQUEST_OVERHEAD: u64 = 1024;

/// The bytes one image adds to a multipart chunk: its own part (boundary, headers with the
/// filename, the bytes) and its entry in `job.items`, with some slack for JSON escaping.
pub fn multipart_cost(image: &ImageFile) -> u64 {
    let names =
        image.filename.len() + image.custom_id.len() + image.post_id.as_deref().map_or(0, str::len);
    image.bytes + 256 + 2 * names as u64
}

/// Images grouped into requests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the images, in order; every chunk's cost is at most the limit.
    pub chunks: Vec<Vec<usize>>,
    /// Images that alone are over the limit: they cannot be sent.
    pub too_large: Vec<usize>,
}

/// Packs items in order into chunks of at most `limit` bytes (with `REQUEST_OVERHEAD`
/// each), given each item's cost.
pub fn plan_chunks(costs: impl IntoIterator<Item = u64>, limit: u64) -> Plan {
    let mut plan = Plan::default();
    let mut current = Vec::new();
    let mut used = REQUEST_OVERHEAD;
    for (index, cost) in costs.into_iter().enumerate() {
        if cost.saturating_add(REQUEST_OVERHEAD) > limit {
            plan.too_large.push(index);
            continue;
        }
        if used + cost > limit {
            plan.chunks.push(std::mem::take(&mut current));
            used = REQUEST_OVERHEAD;
        }
        current.push(index);
        used += cost;
    }
    if !current.is_empty() {
        plan.chunks.push(current);
    }
    plan
}

/// The Idempotency-Key of chunk `index` of job `job_id`: the same on every attempt, so a
/// chunk whose answer was lost is not stored twice when it is sent again.
pub fn chunk_key(job_id: &str, index: usize) -> String {
    format!("batchlens-cli:{job_id}:chunk:{index}")
}

/// The `job` part of a chunk: one `items` entry per file part, naming it.
pub fn job_part(images: &[&ImageFile]) -> Value {
    let items: Vec<Value> = images
        .iter()
        .map(|i| {
            let mut item = json!({"file": i.filename, "custom_id": i.custom_id});
            if let Some(post) = &i.post_id {
                item["post_id"] = json!(post);
            }
            item
        })
        .collect();
    json!({ "items": items })
}

/// The multipart body of a chunk. `sent(n)` is called as the bytes of the files go out.
pub fn chunk_form(
    images: &[&ImageFile],
    sent: impl Fn(u64) + Clone + Send + Sync + 'static,
) -> Result<Form, CliError> {
    let job = Part::text(job_part(images).to_string())
        .mime_str("application/json")
        .map_err(|e| CliError::Http(e.to_string()))?;
    let mut form = Form::new().part("job", job);
    for image in images {
        let path = image.path.clone();
        let len = image.bytes;
        let sent = sent.clone();
        // Opened lazily and read in 64 KiB pieces: a chunk of thousands of files keeps one
        // open at a time and none in memory. `take(len)` keeps the declared length true if
        // the file grew since the walk.
        let stream = futures::stream::once(async move { tokio::fs::File::open(path).await })
            .map_ok(move |file| {
                tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024)
            })
            .try_flatten()
            .inspect_ok(move |bytes| sent(bytes.len() as u64));
        let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(image.filename.clone())
            .mime_str(image.mime)
            .map_err(|e| CliError::Http(e.to_string()))?;
        form = form.part("image", part);
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_under_the_limit_and_an_image_over_it_is_reported() {
        let costs = [400, 300, 300, 2000, 100, 600, 50];
        let plan = plan_chunks(costs, 1024 + 700);
        assert_eq!(plan.chunks, vec![vec![0, 1], vec![2, 4], vec![5, 6]]);
        assert_eq!(plan.too_large, vec![3]);
        for chunk in &plan.chunks {
            let total: u64 = chunk.iter().map(|&i| costs[i]).sum::<u64>() + REQUEST_OVERHEAD;
            assert!(total <= 1024 + 700, "{chunk:?} is {total}");
        }
    }

    #[test]
    fn an_exact_fit_is_one_chunk_and_nothing_is_no_chunk() {
        assert_eq!(plan_chunks([500, 500], 2024).chunks, vec![vec![0, 1]]);
        assert_eq!(plan_chunks([500, 501], 2024).chunks, vec![vec![0], vec![1]]);
        assert_eq!(plan_chunks([], 2024), Plan::default());
    }

    #[test]
    fn many_small_images_fill_chunks_of_the_default_size() {
        let costs = vec![200 * 1024u64; 2000];
        let plan = plan_chunks(costs.iter().copied(), DEFAULT_CHUNK_BYTES);
        assert!(plan.too_large.is_empty());
        assert_eq!(plan.chunks.iter().map(Vec::len).sum::<usize>(), 2000);
        assert_eq!(plan.chunks.len(), 7, "286 images of 200 KiB per 56 MiB");
    }

    #[test]
    fn chunk_keys_are_deterministic_per_job_and_index() {
        let job = "0e7c3f0a-0000-4000-8000-000000000001";
        assert_eq!(chunk_key(job, 3), chunk_key(job, 3));
        assert_ne!(chunk_key(job, 3), chunk_key(job, 4));
        assert_ne!(
            chunk_key(job, 3),
            chunk_key("0e7c3f0a-0000-4000-8000-000000000002", 3)
        );
        assert!(
            chunk_key(job, 3).len() <= 255,
            "API.md: keys are at most 255 characters"
        );
    }

    #[test]
    fn the_job_part_names_every_file_with_its_ids() {
        let a = ImageFile {
            path: "/x/p7/look3.jpg".into(),
            filename: "p7/look3.jpg".into(),
            custom_id: "p7:look3".into(),
            post_id: Some("p7".into()),
            mime: "image/jpeg",
            bytes: 10,
        };
        let b = ImageFile {
            filename: "cover.png".into(),
            custom_id: "cover".into(),
            post_id: None,
            ..a.clone()
        };
        assert_eq!(
            job_part(&[&a, &b]),
            json!({"items": [
                {"file": "p7/look3.jpg", "custom_id": "p7:look3", "post_id": "p7"},
                {"file": "cover.png", "custom_id": "cover"},
            ]})
        );
        assert!(multipart_cost(&a) > a.bytes + "p7/look3.jpg".len() as u64);
    }
}
