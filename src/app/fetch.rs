//! `fetch: "inline"`: batchlens downloads a chunk's `image_url`s itself, before intake,
//! through the guarded outbound client (https only, no loopback, private or otherwise
//! reserved address, checked on the address connected to and on every redirect, unless
//! `intake.fetch_allow_private`). Downloads run concurrently, at most
//! `IntakeSettings::fetch_slots` at once over every request, each under
//! `intake.fetch_timeout_secs` and `intake.max_image_bytes`; each one's bytes are checked
//! (and downscaled) on a blocking thread as soon as they arrive, so only the stored form is
//! kept. A failure becomes the item's rejection reason (`image_url: HTTP 404`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::config::IntakeSettings;
use crate::intake::{FetchedImage, IntakeLimits, ItemInput};
use crate::outbound::{Failure, Fetched, Options, Outbound, Resolver, UrlPolicy};

/// Downloads `image_url`s for intake. One per process: its slots bound every request's
/// downloads together.
pub struct Fetcher {
    outbound: Outbound,
    slots: Arc<Semaphore>,
    per_request: usize,
    max_bytes: u64,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("outbound", &self.outbound)
            .field("slots", &self.per_request)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher as `intake` configures it, resolving names through `resolver`; `policy`
    /// replaces the configured URL policy (tests give one with `UrlPolicy::exempt`).
    pub fn new(
        intake: &IntakeSettings,
        resolver: Arc<dyn Resolver>,
        policy: Option<UrlPolicy>,
    ) -> Self {
        let mut options = Options::fetches(Duration::from_secs(intake.fetch_timeout_secs))
            .allow_private(intake.fetch_allow_private)
            .resolver(resolver);
        if let Some(policy) = policy {
            options = options.policy(policy);
        }
        let slots = intake.fetch_slots();
        Fetcher {
            outbound: Outbound::new(options),
            slots: Arc::new(Semaphore::new(slots)),
            per_request: slots,
            max_bytes: intake.max_image_bytes as u64,
        }
    }

    /// Downloads the `image_url` of every item that gives only that, and puts what became
    /// of it on the item (`ItemInput::fetched`) for intake to take. Items that give another
    /// source, or several, are left for intake to judge.
    pub async fn fetch_all(&self, items: &mut [ItemInput], limits: &IntakeLimits) {
        let wanted: Vec<(usize, String)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                ItemInput {
                    image_url: Some(url),
                    image_base64: None,
                    data_url: None,
                    image_bytes: None,
                    ..
                } => Some((i, url.trim().to_owned())),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let limits = Arc::new(limits.clone());
        let done: Vec<(usize, FetchedImage)> = futures::stream::iter(wanted)
            .map(|(i, url)| {
                let limits = limits.clone();
                async move { (i, self.fetch_one(&url, limits).await) }
            })
            .buffer_unordered(self.per_request)
            .collect()
            .await;
        let fetched = done.iter().filter(|(_, f)| f.is_ok()).count();
        tracing::debug!(urls = done.len(), fetched, "image_urls fetched");
        for (i, image) in done {
            items[i].fetched = Some(image);
        }
    }

    async fn fetch_one(&self, url: &str, limits: Arc<IntakeLimits>) -> FetchedImage {
        // The slot is held through the check too: it bounds the bytes held, raw or decoded.
        let Ok(_slot) = self.slots.acquire().await else {
            return FetchedImage::failed("could not be fetched (shutting down)");
        };
        match self.outbound.fetch(url, self.max_bytes).await {
            Err(failure) => FetchedImage::failed(reason(&failure)),
            Ok(Fetched { bytes, .. }) => {
                tokio::task::spawn_blocking(move || FetchedImage::check(&bytes, &limits))
                    .await
                    .unwrap_or_else(|_| FetchedImage::failed("could not be checked"))
            }
        }
    }
}

/// A download's failure as the rejection reason after `image_url: `.
fn reason(failure: &Failure) -> String {
    match failure {
        // API.md: `image_url: resolves to a private address`, naming the kind.
        Failure::BlockedAddress(why) => {
            format!("resolves to {why} (batchlens fetches images from public addresses only)")
        }
        Failure::Failed => {
            "could not be fetched (the name did not resolve, or connecting, TLS or the \
             transfer failed)"
                .to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_no_host() {
        assert_eq!(reason(&Failure::Status(404)), "HTTP 404");
        assert_eq!(
            reason(&Failure::TimedOut(Duration::from_secs(10))),
            "timed out after 10 s"
        );
        assert_eq!(
            reason(&Failure::TooLarge { limit: 100 }),
            "too large (over 100 bytes)"
        );
        use crate::outbound::Refusal;
        for (why, kind) in [
            (Refusal::Loopback, "a loopback address"),
            (Refusal::Private, "a private address"),
            (Refusal::LinkLocal, "a link-local address"),
            (Refusal::Shared, "a shared (CGNAT) address"),
            (Refusal::Multicast, "a multicast address"),
            (Refusal::Unspecified, "an unspecified address"),
        ] {
            let text = reason(&Failure::BlockedAddress(why));
            assert!(text.starts_with(&format!("resolves to {kind} (")), "{text}");
        }
    }
}
