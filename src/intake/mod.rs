//! Intake: per-item validation of a submitted image set. Each item is accepted (and its
//! inline image normalized, and downscaled when the limits ask) or rejected on its own with
//! a reason a person can act on. Inline images are identified by their bytes and must be
//! whole (a truncated PNG, JPEG, WEBP or GIF is refused). No I/O: URLs are checked, never
//! fetched here (with `fetch: "inline"`, `app::fetch` downloads them first and hands in a
//! [`FetchedImage`]).

mod complete;
mod image;
mod item;
pub mod resize;
pub mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::{ItemError, ItemReuse, ItemStatus, NewItem};

pub use image::{sniff_image, ImageFormat, ImageInfo};
pub use item::FetchedImage;
pub use resize::DownscaleTarget;
pub use upload::FromPart;

/// One image of a job as a client submits it. Give exactly one of `image_url`,
/// `image_base64` (`mime_type` optional) or `data_url`.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[schema(as = JobItem)]
pub struct ItemInput {
    /// Your id for the item, unique in the job: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
    /// Generated as `item-<index>` when left out.
    #[schema(example = "p1-0")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// Groups images of the same post (up to 256 characters); results can be read per post.
    #[schema(example = "p1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_id: Option<String>,
    /// An `https://` URL OpenAI fetches the image from (up to 2048 characters, no user
    /// name or password in it); with the job's `fetch: "inline"`, batchlens fetches it at
    /// intake and stores the image inline.
    #[schema(example = "https://cdn.example.com/a.jpg")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// The image bytes in base64 (standard or URL-safe alphabet; line breaks allowed):
    /// a whole (not truncated) PNG, JPEG, WEBP or non-animated GIF of at most 20 MiB
    /// decoded. Its type is read from the bytes.
    #[schema(
        example = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg=="
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_base64: Option<String>,
    /// The type of `image_base64`, optional: the bytes decide the real type. One that
    /// disagrees with the bytes is not an error; the item's result carries a `note`.
    #[schema(example = "image/png")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// The image as a base64 data URL: `data:<mime>;base64,<payload>`, same rules as
    /// `image_base64` (a `<mime>` the bytes contradict gives a `note` too).
    #[schema(
        example = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg=="
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_url: Option<String>,
    /// Set when the item comes from a multipart part (never from JSON): how its rejection
    /// names the part, the custom_id its filename gives, or why it cannot be an item.
    #[serde(skip)]
    pub part: Option<FromPart>,
    // Never in a body: set when batchlens downloaded `image_url` itself (`fetch:
    // "inline"`), and then the item's image.
    #[serde(skip)]
    pub fetched: Option<FetchedImage>,
    /// Never in a body: an uploaded file's bytes as they came (a multipart `image` part),
    /// checked as `image_base64`'s decoded bytes are, without a base64 round trip.
    #[serde(skip)]
    pub image_bytes: Option<bytes::Bytes>,
}

/// The limits intake enforces on each item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeLimits {
    /// Largest inline image, in decoded bytes.
    pub max_image_bytes: usize,
    pub max_custom_id_len: usize,
    pub max_url_len: usize,
    /// When set, inline images larger than this model looks at (at this detail) are stored
    /// downscaled to that size. `None` (the default) stores them as sent.
    pub downscale: Option<DownscaleTarget>,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            max_custom_id_len: 64,
            max_url_len: 2048,
            downscale: None,
        }
    }
}

pub use crate::domain::Rejection;

/// The outcome of checking one chunk of items.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeResult {
    /// Every item, accepted (`Pending`) and rejected (`Rejected`), in input order.
    pub items: Vec<NewItem>,
    pub rejected: Vec<Rejection>,
    pub accepted: usize,
}

/// Checks a chunk of items whose first one sits at `first_index` in the job.
/// `taken_custom_ids` are the ids of the job's earlier items. Rejected items keep
/// their place (and a usable custom_id) so indexes stay those the client sent.
/// The image work runs on up to every core and blocks until done: from async code, call
/// it inside `tokio::task::spawn_blocking`.
pub fn check_items(
    inputs: Vec<ItemInput>,
    first_index: i64,
    taken_custom_ids: &HashSet<String>,
    limits: &IntakeLimits,
) -> IntakeResult {
    let pending = settle_ids(inputs, first_index, taken_custom_ids, limits);

    // Then the images, which are independent of each other and CPU-heavy (base64, decoding,
    // resizing): in parallel.
    let checked = parallel_map(&pending, |p| {
        p.source.as_ref().map(|source| {
            item::check_image(source, limits).map_err(|r| named_by_part(r, p.label.as_deref()))
        })
    });

    assemble(pending, checked)
}

/// The ids of a chunk's items, in order (uniqueness depends on every earlier item), and
/// each item's first problem with its ids, post id or source.
fn settle_ids(
    inputs: Vec<ItemInput>,
    first_index: i64,
    taken_custom_ids: &HashSet<String>,
    limits: &IntakeLimits,
) -> Vec<Pending> {
    // Generated ids steer clear of every id the client chose, even later in the chunk,
    // so a client's own id never loses to a generated one.
    let chosen: HashSet<String> = inputs
        .iter()
        .filter_map(|i| i.custom_id.as_deref())
        .filter(|id| item::check_custom_id(id, limits.max_custom_id_len).is_ok())
        .map(str::to_owned)
        .collect();
    // custom_id → index of the item of this chunk that holds it.
    let mut used: HashMap<String, i64> = HashMap::with_capacity(inputs.len());

    let mut pending = Vec::with_capacity(inputs.len());
    for (pos, mut input) in inputs.into_iter().enumerate() {
        let index = first_index + pos as i64;
        // The first problem found is the one reported.
        let mut failure: Option<item::Reject> = None;
        let fail = |failure: &mut Option<item::Reject>, code: &'static str, reason: String| {
            failure.get_or_insert(item::Reject { code, reason });
        };
        let part = input.part.take().unwrap_or_default();
        if let Some(why) = part.refused {
            fail(
                &mut failure,
                item::INVALID_ITEM,
                format!("{}: {why}", part.label),
            );
        }

        let given_id = input.custom_id.take().and_then(|id| {
            let problem = custom_id_problem(&id, &used, taken_custom_ids, limits);
            match problem {
                Some(reason) => {
                    fail(&mut failure, item::INVALID_ITEM, reason);
                    None
                }
                None => Some(id),
            }
        });
        let custom_id = given_id.unwrap_or_else(|| match part.id_stem {
            Some(stem) => derived_id(&stem, taken_custom_ids, &chosen, &used, limits),
            None => generate_id(index, taken_custom_ids, &chosen, &used),
        });

        let post_id = input
            .post_id
            .take()
            .filter(|p| match item::check_post_id(p) {
                Ok(()) => true,
                Err(reason) => {
                    fail(&mut failure, item::INVALID_ITEM, reason);
                    false
                }
            });

        let source = match item::take_source(&mut input) {
            Err(r) => {
                fail(&mut failure, r.code, r.reason);
                None
            }
            // An item already rejected is not worth decoding.
            Ok(_) if failure.is_some() => None,
            Ok(source) => Some(source),
        };

        used.insert(custom_id.clone(), index);
        pending.push(Pending {
            index,
            custom_id,
            post_id,
            failure,
            source,
            label: (!part.label.is_empty()).then_some(part.label),
        });
    }
    pending
}

/// Why a client's custom_id cannot be used: malformed, or taken earlier in this chunk or
/// by an earlier item of the job.
fn custom_id_problem(
    id: &str,
    used: &HashMap<String, i64>,
    taken_custom_ids: &HashSet<String>,
    limits: &IntakeLimits,
) -> Option<String> {
    item::check_custom_id(id, limits.max_custom_id_len)
        .err()
        .or_else(|| {
            if let Some(prev) = used.get(id) {
                Some(format!(
                    "custom_id {} is already used by item {prev}",
                    item::quoted(id)
                ))
            } else if taken_custom_ids.contains(id) {
                Some(format!(
                    "custom_id {} is already used by another item of this job",
                    item::quoted(id)
                ))
            } else {
                None
            }
        })
}

/// Every item with its checked image or its rejection, in input order.
fn assemble(
    pending: Vec<Pending>,
    checked: Vec<Option<Result<item::CheckedImage, item::Reject>>>,
) -> IntakeResult {
    let mut out = IntakeResult {
        items: Vec::with_capacity(pending.len()),
        rejected: Vec::new(),
        accepted: 0,
    };
    for (p, checked) in pending.into_iter().zip(checked) {
        let Pending {
            index,
            custom_id,
            post_id,
            failure,
            ..
        } = p;
        let outcome = match (checked, failure) {
            (_, Some(r)) | (Some(Err(r)), None) => Err(r),
            (Some(Ok(c)), None) => Ok(c),
            (None, None) => unreachable!("an item without an image has a failure"),
        };
        let new_item = match outcome {
            Ok(c) => {
                out.accepted += 1;
                NewItem {
                    custom_id,
                    post_id,
                    image: c.image,
                    width: c.width,
                    height: c.height,
                    status: ItemStatus::Pending,
                    error: None,
                    note: c.note,
                    content_sha256: c.sha256,
                    reuse_key: None,
                    reuse: ItemReuse::Sent,
                }
            }
            Err(r) => {
                out.rejected.push(Rejection {
                    index,
                    custom_id: custom_id.clone(),
                    reason: r.reason.clone(),
                });
                NewItem {
                    custom_id,
                    post_id,
                    image: String::new(),
                    width: None,
                    height: None,
                    status: ItemStatus::Rejected,
                    error: Some(ItemError {
                        code: r.code.to_string(),
                        message: r.reason,
                    }),
                    note: None,
                    content_sha256: None,
                    reuse_key: None,
                    reuse: ItemReuse::Sent,
                }
            }
        };
        out.items.push(new_item);
    }
    out
}

/// An item whose ids are settled and whose image, if it still has one to check, is not yet.
struct Pending {
    index: i64,
    custom_id: String,
    post_id: Option<String>,
    failure: Option<item::Reject>,
    source: Option<item::Source>,
    /// How a multipart part is named in the item's rejection.
    label: Option<String>,
}

/// An uploaded part's image rejection names the part, not the `image_base64` it travels in.
fn named_by_part(reject: item::Reject, label: Option<&str>) -> item::Reject {
    match (label, reject.reason.strip_prefix("image_base64: ")) {
        (Some(label), Some(why)) => item::Reject {
            reason: format!("{label}: {why}"),
            ..reject
        },
        _ => reject,
    }
}

/// `work` on every element, on up to `available_parallelism` threads; results in input
/// order. Threads take the next element as they finish, so one huge image doesn't hold up
/// a fixed share of the rest.
fn parallel_map<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, work(item)));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every element was taken by a thread"))
        .collect()
}

/// The custom_id an uploaded file's name gives (`stem`, cut to the length limit), or
/// `stem-2`, `stem-3`, … when the job or this chunk already uses it.
fn derived_id(
    stem: &str,
    taken: &HashSet<String>,
    chosen: &HashSet<String>,
    used: &HashMap<String, i64>,
    limits: &IntakeLimits,
) -> String {
    let free = |id: &String| !taken.contains(id) && !chosen.contains(id) && !used.contains_key(id);
    let cut = |suffix: &str| -> String {
        let room = limits.max_custom_id_len.saturating_sub(suffix.len());
        stem.chars().take(room).chain(suffix.chars()).collect()
    };
    std::iter::once(cut(""))
        .chain((2..).map(|n| cut(&format!("-{n}"))))
        .find(free)
        .expect("an unbounded suffix search finds a free id")
}

/// `item-{index}`, or with a suffix when a client already uses that id.
fn generate_id(
    index: i64,
    taken: &HashSet<String>,
    chosen: &HashSet<String>,
    used: &HashMap<String, i64>,
) -> String {
    let free = |id: &String| !taken.contains(id) && !chosen.contains(id) && !used.contains_key(id);
    let base = format!("item-{index}");
    if free(&base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(free)
        .expect("an unbounded suffix search finds a free id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use testkit::{gif, jpeg, pdf, png, webp};

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn url(u: &str) -> ItemInput {
        ItemInput {
            image_url: Some(u.to_string()),
            ..Default::default()
        }
    }

    fn b64(bytes: &[u8], mime: &str) -> ItemInput {
        ItemInput {
            image_base64: Some(STANDARD.encode(bytes)),
            mime_type: Some(mime.to_string()),
            ..Default::default()
        }
    }

    fn data(text: String) -> ItemInput {
        ItemInput {
            data_url: Some(text),
            ..Default::default()
        }
    }

    fn with_id(mut i: ItemInput, id: &str) -> ItemInput {
        i.custom_id = Some(id.to_string());
        i
    }

    fn one(input: ItemInput) -> IntakeResult {
        check_items(vec![input], 0, &none(), &IntakeLimits::default())
    }

    /// The reason an item was rejected, failing the test if it was accepted.
    fn reason(input: ItemInput) -> String {
        let r = one(input);
        assert_eq!(r.accepted, 0, "expected a rejection: {:?}", r.items[0]);
        r.rejected[0].reason.clone()
    }

    fn accepted(input: ItemInput) -> NewItem {
        let r = one(input);
        assert_eq!(r.accepted, 1, "expected acceptance: {:?}", r.rejected);
        r.items.into_iter().next().unwrap()
    }

    #[test]
    fn inline_bytes_are_hashed_as_received_and_urls_are_not() {
        let photo = testkit::jpeg_photo(1600, 1200);
        let expected = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo));
        let limits = downscaling("gpt-4o-mini", crate::domain::Detail::Low);
        let r = check_items(
            vec![
                b64(&photo, "image/jpeg"),
                data(format!(
                    "data:image/jpeg;base64,{}",
                    STANDARD.encode(&photo)
                )),
                url("https://e.com/a.jpg"),
                b64(&png(1, 1), "image/png"),
            ],
            0,
            &none(),
            &limits,
        );
        assert_eq!(r.accepted, 4, "{:?}", r.rejected);
        let shas: Vec<Option<&str>> = r
            .items
            .iter()
            .map(|i| i.content_sha256.as_deref())
            .collect();
        // Downscaled, but hashed before: the bytes the client sent.
        assert_eq!(r.items[0].width, Some(512));
        assert_eq!(shas[0], Some(expected.as_str()));
        assert_eq!(shas[1], Some(expected.as_str()));
        assert_eq!(
            shas[2], None,
            "OpenAI fetches the URL: its content can change"
        );
        assert!(shas[3].is_some_and(|s| s != expected));
    }

    #[test]
    fn https_url_is_accepted_as_is_without_dimensions() {
        let it = accepted(url("https://cdn.example.com/a.jpg?w=1#x"));
        assert_eq!(it.image, "https://cdn.example.com/a.jpg?w=1#x");
        assert_eq!((it.width, it.height), (None, None));
        assert_eq!(it.status, ItemStatus::Pending);
        assert_eq!(it.error, None);
    }

    #[test]
    fn url_rules() {
        assert_eq!(
            reason(url("http://cdn.example.com/a.jpg")),
            "image_url: scheme must be https"
        );
        assert_eq!(
            reason(url("ftp://cdn.example.com/a.jpg")),
            "image_url: scheme must be https"
        );
        assert!(reason(url("data:image/png;base64,AAAA")).contains("send data: URLs in data_url"));
        assert!(reason(url("not a url")).starts_with("image_url: not a valid absolute URL"));
        assert!(
            reason(url("https://")).starts_with("image_url: not a valid absolute URL (empty host)")
        );
        assert_eq!(
            reason(url("https://user:pw@cdn.example.com/a.jpg")),
            "image_url: must not contain a user name or password"
        );
        assert_eq!(
            reason(url("https://user@cdn.example.com/a.jpg")),
            "image_url: must not contain a user name or password"
        );
        let long = format!("https://cdn.example.com/{}", "a".repeat(2048));
        assert_eq!(
            reason(url(&long)),
            "image_url: 2072 characters, over the 2048 limit"
        );
        let exact = format!("https://e.com/{}", "a".repeat(2048 - 14));
        assert_eq!(exact.len(), 2048);
        accepted(url(&exact));
    }

    #[test]
    fn url_rejections_are_invalid_image_with_no_image_stored() {
        let r = one(url("http://x.com/a.png"));
        let it = &r.items[0];
        assert_eq!(it.status, ItemStatus::Rejected);
        assert_eq!(it.image, "");
        assert_eq!(
            it.error,
            Some(ItemError {
                code: "invalid_image".into(),
                message: "image_url: scheme must be https".into()
            })
        );
    }

    #[test]
    fn exactly_one_source() {
        let msg = "give exactly one of image_url, image_base64 or data_url";
        assert_eq!(reason(ItemInput::default()), msg);
        let mut two = url("https://e.com/a.png");
        two.data_url = Some(format!(
            "data:image/png;base64,{}",
            STANDARD.encode(png(1, 1))
        ));
        assert_eq!(reason(two.clone()), msg);
        let r = one(two);
        assert_eq!(r.items[0].error.as_ref().unwrap().code, "invalid_item");
        let mut three = b64(&png(1, 1), "image/png");
        three.image_url = Some("https://e.com/a.png".into());
        assert_eq!(reason(three), msg);
    }

    #[test]
    fn base64_needs_no_mime_type() {
        let mut i = b64(&png(3, 2), "image/png");
        i.mime_type = None;
        let it = accepted(i.clone());
        assert!(it.image.starts_with("data:image/png;base64,"));
        assert_eq!((it.width, it.height, it.note), (Some(3), Some(2), None));
        i.mime_type = Some("  ".into());
        assert_eq!(accepted(i).note, None, "a blank mime_type declares nothing");
    }

    #[test]
    fn a_declared_type_that_agrees_leaves_no_note() {
        for (bytes, mime) in [
            (png(1, 1), "image/png"),
            (png(1, 1), "IMAGE/PNG; charset=binary"),
            (png(1, 1), "image/x-png"),
            (testkit::jpeg_photo(8, 8), "image/jpeg"),
            (testkit::jpeg_photo(8, 8), "image/jpg"),
            (webp(5, 7), "image/webp"),
            (gif(4, 9, 1), "image/gif"),
        ] {
            assert_eq!(accepted(b64(&bytes, mime)).note, None, "{mime}");
            let url = format!("data:{mime};base64,{}", STANDARD.encode(&bytes));
            assert_eq!(accepted(data(url)).note, None, "{mime}");
        }
        let url = format!("data:;base64,{}", STANDARD.encode(png(1, 1)));
        assert_eq!(accepted(data(url)).note, None, "no mime in the data URL");
    }

    #[test]
    fn a_declared_type_the_bytes_contradict_is_accepted_with_a_note() {
        let it = accepted(b64(&png(2, 2), "image/jpeg"));
        assert!(it.image.starts_with("data:image/png;base64,"));
        assert_eq!(
            it.note.as_deref(),
            Some(
                "mime_type \"image/jpeg\" disagrees with the bytes, which are a PNG \
                 (image/png); the bytes decide"
            )
        );
        let it = accepted(data(format!(
            "data:image/gif;base64,{}",
            STANDARD.encode(testkit::jpeg_photo(8, 8))
        )));
        assert_eq!(
            it.note.as_deref(),
            Some(
                "data_url \"image/gif\" disagrees with the bytes, which are a JPEG \
                 (image/jpeg); the bytes decide"
            )
        );
        let it = accepted(b64(&webp(5, 7), "application/octet-stream"));
        assert!(it.note.unwrap().contains("which are a WEBP (image/webp)"));
        // A rejected item carries its error, not a note.
        let r = one(b64(&pdf(), "image/png"));
        assert_eq!(r.items[0].note, None);
    }

    #[test]
    fn a_note_survives_downscaling() {
        let limits = downscaling("gpt-4o-mini", crate::domain::Detail::Low);
        let photo = testkit::jpeg_photo(1600, 1200);
        let r = check_items(vec![b64(&photo, "image/png")], 0, &none(), &limits);
        assert_eq!(r.accepted, 1, "{:?}", r.rejected);
        assert_eq!(r.items[0].width, Some(512));
        assert!(r.items[0]
            .note
            .as_deref()
            .unwrap()
            .contains("which are a JPEG"));
    }

    #[test]
    fn truncated_images_are_rejected_in_both_inline_forms() {
        let png64 = png(64, 64);
        let small = testkit::jpeg_photo(64, 64);
        let large = testkit::jpeg_photo(1200, 900);
        let g = gif(4, 9, 1);
        let w = webp(5, 7);
        let cases: [(&[u8], &str); 5] = [
            (&png64[..png64.len() / 2], "the PNG is truncated ("),
            (&small[..small.len() / 2], "the JPEG is truncated ("),
            (&large[..large.len() / 2], "the JPEG is truncated ("),
            (&g[..g.len() - 1], "the GIF is truncated ("),
            (&w[..w.len() - 2], "the WEBP is truncated ("),
        ];
        for (cut, starts) in cases {
            let r = reason(ItemInput {
                image_base64: Some(STANDARD.encode(cut)),
                ..Default::default()
            });
            assert!(r.starts_with(&format!("image_base64: {starts}")), "{r}");
            let r = reason(data(format!(
                "data:image/png;base64,{}",
                STANDARD.encode(cut)
            )));
            assert!(r.starts_with(&format!("data_url: {starts}")), "{r}");
        }
        // Also when downscaling would decode them: the structural check comes first.
        let limits = downscaling("gpt-4o", crate::domain::Detail::Low);
        let r = check_items(
            vec![b64(&large[..large.len() / 2], "image/jpeg")],
            0,
            &none(),
            &limits,
        );
        assert_eq!(
            r.rejected[0].reason,
            "image_base64: the JPEG is truncated (its scan data has no EOI marker)"
        );
        assert_eq!(r.items[0].error.as_ref().unwrap().code, "invalid_image");
    }

    #[test]
    fn each_format_is_accepted_as_a_normalized_data_url_with_dimensions() {
        let cases = [
            (png(3, 2), "image/png", 3, 2),
            (jpeg(640, 480), "image/jpeg", 640, 480),
            (webp(5, 7), "image/webp", 5, 7),
            (gif(4, 9, 1), "image/gif", 4, 9),
        ];
        for (bytes, mime, w, h) in cases {
            let it = accepted(b64(&bytes, mime));
            assert_eq!(
                it.image,
                format!("data:{mime};base64,{}", STANDARD.encode(&bytes))
            );
            assert_eq!((it.width, it.height), (Some(w), Some(h)));
        }
    }

    #[test]
    fn the_bytes_decide_the_mime_not_the_declaration() {
        let bytes = png(2, 2);
        let it = accepted(b64(&bytes, "image/jpeg"));
        assert!(
            it.image.starts_with("data:image/png;base64,"),
            "{}",
            it.image
        );
        let it = accepted(data(format!(
            "data:image/gif;base64,{}",
            STANDARD.encode(&bytes)
        )));
        assert!(it.image.starts_with("data:image/png;base64,"));
    }

    #[test]
    fn whitespace_and_url_safe_base64_are_normalized() {
        // Bytes chosen so the standard encoding holds '+' and '/'.
        let mut bytes = png(1, 1);
        bytes.extend_from_slice(&[0xFB, 0xEF, 0xBE, 0xFF]);
        let standard = STANDARD.encode(&bytes);
        assert!(standard.contains('+') || standard.contains('/'));
        let expected = format!("data:image/png;base64,{standard}");

        let wrapped: String = standard
            .as_bytes()
            .chunks(10)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n ");
        let mut i = b64(&bytes, "image/png");
        i.image_base64 = Some(format!("\n{wrapped}\n"));
        assert_eq!(accepted(i.clone()).image, expected);

        i.image_base64 = Some(URL_SAFE.encode(&bytes));
        assert_eq!(accepted(i.clone()).image, expected);
        i.image_base64 = Some(URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(accepted(i.clone()).image, expected);
        i.image_base64 = Some(standard.trim_end_matches('=').to_string());
        assert_eq!(accepted(i).image, expected);
    }

    #[test]
    fn invalid_base64_is_rejected() {
        let mut i = b64(&png(1, 1), "image/png");
        i.image_base64 = Some("iVBOR*0KGgo=".into());
        assert_eq!(
            reason(i.clone()),
            "image_base64: not valid base64 (unexpected '*' at position 5)"
        );
        i.image_base64 = Some("iVBORw0KG".into());
        assert!(reason(i.clone()).contains("was it cut short?"));
        i.image_base64 = Some(" \n ".into());
        assert_eq!(reason(i), "image_base64: empty");
    }

    #[test]
    fn pdf_is_rejected_with_what_it_looks_like() {
        let r = one(b64(&pdf(), "image/png"));
        assert_eq!(
            r.rejected[0].reason,
            "image_base64: not a PNG, JPEG, WEBP or GIF image (first bytes 25 50 44 46: looks like a PDF)"
        );
        assert_eq!(r.items[0].error.as_ref().unwrap().code, "invalid_image");
        assert_eq!(r.items[0].image, "");
    }

    #[test]
    fn animated_gif_is_rejected_in_both_inline_forms() {
        let g = gif(2, 2, 2);
        assert_eq!(
            reason(b64(&g, "image/gif")),
            "image_base64: animated GIFs are not supported"
        );
        assert_eq!(
            reason(data(format!(
                "data:image/gif;base64,{}",
                STANDARD.encode(&g)
            ))),
            "data_url: animated GIFs are not supported"
        );
    }

    #[test]
    fn zero_dimensions_are_rejected() {
        assert!(reason(b64(&png(0, 3), "image/png")).contains("zero dimension (0x3 pixels)"));
    }

    #[test]
    fn size_limit_is_on_decoded_bytes_and_checked_before_decoding() {
        let limits = IntakeLimits {
            max_image_bytes: 100,
            ..Default::default()
        };
        let exact = {
            let mut p = png(1, 1);
            p.resize(100, 0);
            p
        };
        let r = check_items(vec![b64(&exact, "image/png")], 0, &none(), &limits);
        assert_eq!(r.accepted, 1, "{:?}", r.rejected);

        let mut over = exact.clone();
        over.push(0);
        let r = check_items(vec![b64(&over, "image/png")], 0, &none(), &limits);
        assert_eq!(
            r.rejected[0].reason,
            "image_base64: 101 bytes decoded, over the 100 bytes limit"
        );

        // Not even valid base64: only the length check can have rejected it.
        let huge = ItemInput {
            image_base64: Some("!".repeat(200)),
            mime_type: Some("image/png".into()),
            ..Default::default()
        };
        let r = check_items(vec![huge], 0, &none(), &limits);
        assert!(r.rejected[0].reason.contains("over the 100 bytes limit"));
    }

    #[test]
    fn size_message_in_mib() {
        let limits = IntakeLimits::default();
        let size = 24_536_678usize; // 23.4 MiB
        let text = "A".repeat(size.div_ceil(3) * 4);
        let r = check_items(
            vec![data(format!("data:image/png;base64,{text}"))],
            0,
            &none(),
            &limits,
        );
        assert_eq!(
            r.rejected[0].reason,
            "data_url: 23.4 MiB decoded, over the 20 MiB limit"
        );
    }

    #[test]
    fn data_url_rules() {
        let payload = STANDARD.encode(png(2, 3));
        let it = accepted(data(format!("DATA:image/png;BASE64,{payload}")));
        assert_eq!(it.image, format!("data:image/png;base64,{payload}"));
        assert_eq!((it.width, it.height), (Some(2), Some(3)));

        assert!(reason(data(format!("data:image/png,{payload}")))
            .starts_with("data_url: only base64 data URLs are supported"));
        assert!(reason(data("https://e.com/a.png".into())).contains("send URLs in image_url"));
        assert!(reason(data("data:image/png;base64".into())).contains("no ','"));
        assert!(reason(data(format!(
            "data:application/pdf;base64,{}",
            STANDARD.encode(pdf())
        )))
        .contains("looks like a PDF"));
    }

    #[test]
    fn custom_ids_are_generated_from_the_index() {
        let r = check_items(
            vec![url("https://e.com/a"), url("https://e.com/b")],
            7,
            &none(),
            &IntakeLimits::default(),
        );
        let ids: Vec<_> = r.items.iter().map(|i| i.custom_id.as_str()).collect();
        assert_eq!(ids, ["item-7", "item-8"]);
    }

    #[test]
    fn generated_ids_avoid_ids_already_in_use() {
        let taken: HashSet<String> = ["item-0".to_string()].into();
        let r = check_items(
            vec![
                url("https://e.com/a"),
                url("https://e.com/b"),
                with_id(url("https://e.com/c"), "item-1"),
            ],
            0,
            &taken,
            &IntakeLimits::default(),
        );
        let ids: Vec<_> = r.items.iter().map(|i| i.custom_id.as_str()).collect();
        // item-1 is the client's choice (later in the chunk) and wins over the generated one.
        assert_eq!(ids, ["item-0-1", "item-1-1", "item-1"]);
        assert_eq!(r.accepted, 3);
    }

    #[test]
    fn custom_id_syntax() {
        let ok = url("https://e.com/a");
        assert_eq!(
            accepted(with_id(ok.clone(), "A-z_0.9:x")).custom_id,
            "A-z_0.9:x"
        );
        accepted(with_id(ok.clone(), &"x".repeat(64)));
        assert_eq!(
            reason(with_id(ok.clone(), &"x".repeat(65))),
            "custom_id is 65 characters, over the 64 limit"
        );
        assert_eq!(
            reason(with_id(ok.clone(), "a b")),
            "custom_id \"a b\" has the character ' '; use only A-Z a-z 0-9 _ . : -"
        );
        assert!(reason(with_id(ok.clone(), "é")).contains("'é'"));
        assert!(reason(with_id(ok, "")).starts_with("custom_id is empty"));
    }

    #[test]
    fn an_unusable_custom_id_gets_a_generated_one_on_the_rejected_item() {
        let r = check_items(
            vec![with_id(url("https://e.com/a"), "bad id")],
            4,
            &none(),
            &IntakeLimits::default(),
        );
        assert_eq!(r.rejected[0].custom_id, "item-4");
        assert_eq!(r.items[0].custom_id, "item-4");
        assert_eq!(r.items[0].error.as_ref().unwrap().code, "invalid_item");
    }

    #[test]
    fn duplicate_custom_ids_reject_the_later_item() {
        let taken: HashSet<String> = ["old".to_string()].into();
        let r = check_items(
            vec![
                with_id(url("https://e.com/a"), "p1-0"),
                with_id(url("https://e.com/b"), "x"),
                with_id(url("https://e.com/c"), "old"),
                with_id(url("https://e.com/d"), "p1-0"),
            ],
            1,
            &taken,
            &IntakeLimits::default(),
        );
        assert_eq!(r.accepted, 2);
        assert_eq!(
            r.rejected,
            vec![
                Rejection {
                    index: 3,
                    custom_id: "item-3".into(),
                    reason: "custom_id \"old\" is already used by another item of this job".into(),
                },
                Rejection {
                    index: 4,
                    custom_id: "item-4".into(),
                    reason: "custom_id \"p1-0\" is already used by item 1".into(),
                },
            ]
        );
        assert_eq!(r.items[0].custom_id, "p1-0");
        assert_eq!(r.items[0].status, ItemStatus::Pending);
    }

    #[test]
    fn a_rejected_item_with_a_good_id_keeps_and_reserves_it() {
        let r = check_items(
            vec![
                with_id(url("http://e.com/a"), "keep"),
                with_id(url("https://e.com/b"), "keep"),
            ],
            0,
            &none(),
            &IntakeLimits::default(),
        );
        assert_eq!(r.items[0].custom_id, "keep");
        assert_eq!(r.items[0].status, ItemStatus::Rejected);
        assert_eq!(
            r.rejected[1].reason,
            "custom_id \"keep\" is already used by item 0"
        );
    }

    #[test]
    fn post_id_rules() {
        let mut i = url("https://e.com/a");
        i.post_id = Some("p".repeat(256));
        assert_eq!(accepted(i.clone()).post_id.unwrap().len(), 256);
        i.post_id = Some("p".repeat(257));
        assert_eq!(
            reason(i.clone()),
            "post_id is 257 characters, over the 256 limit"
        );
        i.post_id = Some(String::new());
        assert!(reason(i).starts_with("post_id is empty"));
    }

    #[test]
    fn items_keep_input_order_and_counts_add_up() {
        let r = check_items(
            vec![
                url("https://e.com/a"),
                b64(&pdf(), "application/pdf"),
                b64(&jpeg(10, 20), "image/jpeg"),
                ItemInput::default(),
            ],
            10,
            &none(),
            &IntakeLimits::default(),
        );
        let statuses: Vec<_> = r.items.iter().map(|i| i.status).collect();
        assert_eq!(
            statuses,
            [
                ItemStatus::Pending,
                ItemStatus::Rejected,
                ItemStatus::Pending,
                ItemStatus::Rejected
            ]
        );
        assert_eq!(r.accepted, 2);
        let idx: Vec<_> = r.rejected.iter().map(|x| x.index).collect();
        assert_eq!(idx, [11, 13]);
        assert_eq!(r.items[2].width, Some(10));
    }

    #[test]
    fn the_first_problem_is_reported() {
        let mut i = with_id(ItemInput::default(), "a b");
        i.post_id = Some(String::new());
        assert!(reason(i).starts_with("custom_id"));
    }

    fn downscaling(model: &str, detail: crate::domain::Detail) -> IntakeLimits {
        IntakeLimits {
            downscale: Some(DownscaleTarget::new(model, detail)),
            ..IntakeLimits::default()
        }
    }

    /// The bytes and mime of a stored data URL.
    fn stored(image: &str) -> (Vec<u8>, String) {
        let (head, payload) = image.split_once(";base64,").unwrap();
        let mime = head.strip_prefix("data:").unwrap().to_string();
        (STANDARD.decode(payload).unwrap(), mime)
    }

    #[test]
    fn with_downscaling_a_large_image_is_stored_at_the_size_the_model_sees() {
        use crate::domain::Detail;
        let photo = testkit::jpeg_photo(1600, 1200);
        let inputs = [
            b64(&photo, "image/jpeg"),
            data(format!(
                "data:image/jpeg;base64,{}",
                STANDARD.encode(&photo)
            )),
        ];
        for (detail, dims) in [(Detail::Low, (512, 384)), (Detail::High, (1024, 768))] {
            for input in inputs.clone() {
                let limits = downscaling("gpt-4o-mini", detail);
                let r = check_items(vec![input], 0, &none(), &limits);
                assert_eq!(r.accepted, 1, "{:?}", r.rejected);
                let it = &r.items[0];
                assert_eq!((it.width, it.height), (Some(dims.0), Some(dims.1)));
                let (bytes, mime) = stored(&it.image);
                assert_eq!(mime, "image/jpeg");
                assert!(bytes.len() < photo.len());
                let img = ::image::load_from_memory(&bytes).unwrap();
                assert_eq!((img.width() as i32, img.height() as i32), dims);
                // The stored mime is what the bytes are.
                assert_eq!(sniff_image(&bytes).unwrap().mime, "image/jpeg");
            }
        }
    }

    #[test]
    fn without_downscaling_inline_images_are_stored_as_sent() {
        let photo = testkit::jpeg_photo(1600, 1200);
        let it = accepted(b64(&photo, "image/jpeg"));
        assert_eq!(
            it.image,
            format!("data:image/jpeg;base64,{}", STANDARD.encode(&photo))
        );
        assert_eq!((it.width, it.height), (Some(1600), Some(1200)));
    }

    #[test]
    fn with_downscaling_small_images_and_urls_are_untouched() {
        let limits = downscaling("gpt-4o", crate::domain::Detail::High);
        let small = testkit::jpeg_photo(300, 200);
        let r = check_items(
            vec![b64(&small, "image/jpeg"), url("https://e.com/big.jpg")],
            0,
            &none(),
            &limits,
        );
        assert_eq!(r.accepted, 2);
        assert_eq!(
            r.items[0].image,
            format!("data:image/jpeg;base64,{}", STANDARD.encode(&small))
        );
        assert_eq!(r.items[1].image, "https://e.com/big.jpg");
    }

    #[test]
    fn with_downscaling_an_image_that_does_not_decode_is_rejected() {
        let limits = downscaling("gpt-4o", crate::domain::Detail::Low);
        // A JPEG header with no picture data: it sniffs fine but cannot be decoded.
        let r = check_items(
            vec![b64(&jpeg(640, 480), "image/jpeg")],
            0,
            &none(),
            &limits,
        );
        assert_eq!(r.accepted, 0);
        assert!(
            r.rejected[0]
                .reason
                .starts_with("image_base64: the JPEG could not be decoded: "),
            "{}",
            r.rejected[0].reason
        );
        assert_eq!(r.items[0].error.as_ref().unwrap().code, "invalid_image");
        assert_eq!(r.items[0].image, "");
    }

    #[test]
    fn with_downscaling_a_decompression_bomb_is_rejected() {
        let limits = downscaling("gpt-4o", crate::domain::Detail::Low);
        let bomb = testkit::png_header_claiming(100_000, 100_000);
        let text = format!("data:image/png;base64,{}", STANDARD.encode(&bomb));
        let r = check_items(vec![data(text)], 0, &none(), &limits);
        assert_eq!(
            r.rejected[0].reason,
            "data_url: the PNG is 100000x100000 pixels, too large to resize (at most 16384 \
             pixels a side); send a smaller image"
        );
    }

    #[test]
    fn parallel_image_work_keeps_order_ids_and_rejections() {
        let limits = downscaling("gpt-4o", crate::domain::Detail::Low);
        let sizes = [
            (1600, 1200),
            (600, 900),
            (300, 200),
            (1024, 2048),
            (700, 700),
        ];
        let mut inputs: Vec<ItemInput> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(w, h))| {
                with_id(
                    b64(&testkit::jpeg_photo(w, h), "image/jpeg"),
                    &format!("p-{i}"),
                )
            })
            .collect();
        inputs.insert(2, with_id(url("http://e.com/a"), "p-0"));
        inputs.push(b64(&pdf(), "image/png"));
        let r = check_items(inputs, 0, &none(), &limits);

        let ids: Vec<_> = r.items.iter().map(|i| i.custom_id.as_str()).collect();
        assert_eq!(ids, ["p-0", "p-1", "item-2", "p-2", "p-3", "p-4", "item-6"]);
        let dims: Vec<_> = r.items.iter().map(|i| (i.width, i.height)).collect();
        let some = |w, h| (Some(w), Some(h));
        assert_eq!(
            dims,
            [
                some(512, 384),
                some(341, 512),
                (None, None),
                some(300, 200),
                some(256, 512),
                some(512, 512),
                (None, None),
            ]
        );
        assert_eq!(r.accepted, 5);
        // The duplicate id is reported before the URL's own problem.
        assert_eq!(
            r.rejected[0].reason,
            "custom_id \"p-0\" is already used by item 0"
        );
        assert_eq!(r.rejected[1].index, 6);
    }

    #[test]
    fn parallel_map_keeps_order_with_more_items_than_threads() {
        let items: Vec<u64> = (0..1000).collect();
        let out = parallel_map(&items, |x| x * x);
        assert_eq!(out, items.iter().map(|x| x * x).collect::<Vec<_>>());
        assert!(parallel_map(&[] as &[u8], |x| *x).is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_by_deserialization() {
        let err = serde_json::from_str::<ItemInput>(r#"{"image_url":"https://e.com","url":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `url`"), "{err}");
    }

    #[test]
    fn documented_examples_are_accepted() {
        // The base64 shown in the OpenAPI docs must itself pass intake.
        let ex = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg==";
        let it = accepted(ItemInput {
            image_base64: Some(ex.into()),
            mime_type: Some("image/png".into()),
            ..Default::default()
        });
        assert_eq!((it.width, it.height), (Some(1), Some(1)));
        accepted(data(format!("data:image/png;base64,{ex}")));
    }

    #[test]
    fn openapi_schema_is_named_job_item_and_documents_every_field() {
        assert_eq!(<ItemInput as utoipa::ToSchema>::name(), "JobItem");
        let schema = serde_json::to_value(<ItemInput as utoipa::PartialSchema>::schema()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        assert_eq!(props.len(), 6);
        for (name, prop) in props {
            assert!(prop["description"].is_string(), "{name} has no description");
            assert!(
                prop.get("example")
                    .or_else(|| prop.get("examples"))
                    .is_some(),
                "{name} has no example: {prop}"
            );
        }
    }
}
