//! One result of a job, and the image bytes it was analyzed from.

use base64::Engine;
use uuid::Uuid;

use super::{App, AppError, AppResult};
use crate::domain::Item;

/// An item's image as it was sent to the model (after intake's normalizing and downscaling).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImage {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl App {
    /// The job's item with this `custom_id` (the job already checked to be the caller's).
    pub async fn result(&self, job_id: Uuid, custom_id: &str) -> AppResult<Item> {
        self.store
            .get_item(job_id, custom_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no item {custom_id:?} in job {job_id}")))
    }

    /// The bytes of the item's image. Not found for an `image_url` OpenAI fetched itself
    /// (batchlens never held its bytes) and for an item rejected at intake.
    pub async fn result_image(&self, job_id: Uuid, custom_id: &str) -> AppResult<StoredImage> {
        let item = self.result(job_id, custom_id).await?;
        stored_image(&item.image).ok_or_else(|| {
            AppError::NotFound(if item.image.is_empty() {
                format!("item {custom_id:?} has no image: it was rejected at intake")
            } else {
                format!(
                    "item {custom_id:?} was sent as an image_url that OpenAI fetched itself; \
                     batchlens holds no bytes of it"
                )
            })
        })
    }
}

/// Decodes an inline image as intake stores it: `data:<mime>;base64,<standard base64>`.
/// None for anything else (an `https://` URL, nothing).
pub fn stored_image(image: &str) -> Option<StoredImage> {
    let rest = image.strip_prefix("data:")?;
    let (meta, payload) = rest.split_once(',')?;
    let content_type = meta.strip_suffix(";base64")?;
    if !content_type.starts_with("image/") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    Some(StoredImage {
        content_type: content_type.to_string(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_and_urls_do_not() {
        let png = stored_image("data:image/png;base64,iVBORw0KGgo=").unwrap();
        assert_eq!(png.content_type, "image/png");
        assert_eq!(png.bytes, b"\x89PNG\r\n\x1a\n");
        assert_eq!(stored_image("https://cdn.example.com/a.jpg"), None);
        assert_eq!(stored_image(""), None);
        assert_eq!(stored_image("data:text/html;base64,PGI+"), None);
        assert_eq!(stored_image("data:image/png;base64,@@@"), None);
    }
}
