//! Reuse: an image already analysed for the same tenant, with the same bytes, analyzer,
//! model and detail, is answered from that analysis instead of being sent again, and the
//! same image twice in one job is sent once (the others copy its outcome when it comes).
//! Marks a chunk's accepted items before they are stored; one lookup statement per chunk
//! of keys, never one per image. Images OpenAI fetches by URL have no hash and are
//! always sent.

use std::collections::HashMap;

use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{App, AppResult};
use crate::domain::{Analyzer, Detail, ItemReuse, Mode, NewItem, Reused, ReusedFrom, Usage};

/// What a lookup must match besides the image: whose, which analysis.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub tenant: &'a str,
    pub analyzer: &'a Analyzer,
    pub model: &'a str,
    pub detail: Detail,
    /// `reuse` of the job: off, nothing is taken from other analyses (keys are still
    /// stored, so later jobs can take from this one).
    pub enabled: bool,
}

/// How many of a chunk's images reuse answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marked {
    /// Answered at once from an earlier job's analysis.
    pub reused: usize,
    /// Duplicates of another image of the job: they get its outcome.
    pub copies: usize,
}

impl Marked {
    /// Images not sent (answered at 0).
    pub fn total(&self) -> usize {
        self.reused + self.copies
    }
}

/// The analyzer's identity: SHA-256 (hex) of its prompt and schema as canonical JSON
/// (object keys sorted), so the same analyzer written with its keys in another order is
/// the same analyzer.
pub fn analyzer_key(analyzer: &Analyzer) -> String {
    // serde_json's maps are ordered by key (no `preserve_order`): the text is canonical.
    let text = serde_json::to_string(analyzer).expect("an analyzer serializes");
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What a lookup matches for an image of `content_sha256` in `scope`.
pub fn reuse_key(scope: &Scope, analyzer_key: &str, content_sha256: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        "batchlens-reuse-v1",
        scope.tenant,
        analyzer_key,
        scope.model,
        scope.detail.as_str(),
        content_sha256,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl App {
    /// Gives the chunk's accepted items their reuse keys and, with reuse on, answers those
    /// with an earlier analysis (`intake.reuse_max_age_days`) and makes duplicates copies
    /// of the job's first item with that image (`job`: the stored open job the chunk joins,
    /// whose earlier items count). `first` is the chunk's first position. Reads only.
    pub async fn mark_reuse(
        &self,
        scope: &Scope<'_>,
        items: &mut [NewItem],
        first: i64,
        job: Option<Uuid>,
    ) -> AppResult<Marked> {
        let akey = analyzer_key(scope.analyzer);
        for it in items.iter_mut() {
            it.reuse_key = it
                .content_sha256
                .as_deref()
                .map(|sha| reuse_key(scope, &akey, sha));
        }
        if !scope.enabled {
            return Ok(Marked::default());
        }
        let mut keys: Vec<&str> = items
            .iter()
            .filter(|i| i.is_sent())
            .filter_map(|i| i.reuse_key.as_deref())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Marked::default());
        }
        let mut earlier: HashMap<String, Box<Reused>> = HashMap::new();
        let max_age = self.settings.intake.reuse_max_age_days;
        if max_age > 0 {
            let since = Utc::now() - Duration::days(i64::from(max_age));
            // Newest first: the first found for a key is the one taken.
            for r in self.store.find_reusable(&keys, since).await? {
                if earlier.contains_key(&r.reuse_key) {
                    continue;
                }
                let (batch, individual) = self.would_cost(scope.model, &r.usage);
                let reused = Reused {
                    from: ReusedFrom {
                        job_id: r.job_id,
                        custom_id: r.custom_id,
                    },
                    output: r.output,
                    resolved_model: r.resolved_model,
                    batch_pico_usd: batch,
                    individual_pico_usd: individual,
                };
                earlier.insert(r.reuse_key, Box::new(reused));
            }
        }
        let mut originals: HashMap<String, i64> = HashMap::new();
        if let Some(job_id) = job {
            for (key, position) in self.store.job_originals(job_id, &keys).await? {
                originals.entry(key).or_insert(position);
            }
        }
        Ok(mark(items, first, &earlier, &mut originals))
    }

    /// What `usage` would cost on `model` at Batch API and at standard prices (0 unpriced).
    fn would_cost(&self, model: &str, usage: &Usage) -> (i64, i64) {
        let batch = self.prices.cost(model, usage, Mode::Batch);
        batch.map_or((0, 0), |c| (c.actual, c.individual))
    }
}

/// Marks each sent item of the chunk: reused when `earlier` has its key, else a copy of
/// the first item with its key (in `originals`, or earlier in this chunk).
fn mark(
    items: &mut [NewItem],
    first: i64,
    earlier: &HashMap<String, Box<Reused>>,
    originals: &mut HashMap<String, i64>,
) -> Marked {
    let mut marked = Marked::default();
    for (position, it) in (first..).zip(items.iter_mut()) {
        if !it.is_sent() {
            continue;
        }
        let Some(key) = it.reuse_key.clone() else {
            continue;
        };
        if let Some(r) = earlier.get(&key) {
            it.status = crate::domain::ItemStatus::Succeeded;
            it.reuse = ItemReuse::From(r.clone());
            marked.reused += 1;
        } else if let Some(&original) = originals.get(&key) {
            it.reuse = ItemReuse::CopyOf(original);
            marked.copies += 1;
        } else {
            originals.insert(key, position);
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ItemStatus;
    use serde_json::json;

    fn scope<'a>(tenant: &'a str, analyzer: &'a Analyzer, model: &'a str) -> Scope<'a> {
        Scope {
            tenant,
            analyzer,
            model,
            detail: Detail::Low,
            enabled: true,
        }
    }

    fn item(key: Option<&str>) -> NewItem {
        NewItem {
            reuse_key: key.map(str::to_owned),
            ..NewItem::pending("x", String::new())
        }
    }

    #[test]
    fn keys_differ_by_tenant_analyzer_model_detail_and_bytes() {
        let a = Analyzer {
            prompt: "p".into(),
            schema: json!({"type": "object", "b": 1, "a": 2}),
        };
        let b = Analyzer {
            prompt: "q".into(),
            ..a.clone()
        };
        let (ka, kb) = (analyzer_key(&a), analyzer_key(&b));
        assert_ne!(ka, kb);
        let reordered: Analyzer = serde_json::from_str(
            r#"{"prompt": "p", "schema": {"a": 2, "b": 1, "type": "object"}}"#,
        )
        .unwrap();
        assert_eq!(analyzer_key(&reordered), ka, "key order is not identity");
        let base = reuse_key(&scope("t", &a, "m"), &ka, "sha");
        assert_ne!(base, reuse_key(&scope("u", &a, "m"), &ka, "sha"));
        assert_ne!(base, reuse_key(&scope("t", &a, "n"), &ka, "sha"));
        assert_ne!(base, reuse_key(&scope("t", &a, "m"), &kb, "sha"));
        assert_ne!(base, reuse_key(&scope("t", &a, "m"), &ka, "sha2"));
        let high = Scope {
            detail: Detail::High,
            ..scope("t", &a, "m")
        };
        assert_ne!(base, reuse_key(&high, &ka, "sha"));
        // Lengths are part of the key: parts cannot slide into each other.
        assert_ne!(
            reuse_key(&scope("ab", &a, "m"), &ka, "sha"),
            reuse_key(&scope("a", &a, "bm"), &ka, "sha")
        );
    }

    #[test]
    fn duplicates_copy_the_first_and_earlier_analyses_are_reused() {
        let earlier: HashMap<String, Box<Reused>> = [(
            "old".to_string(),
            Box::new(Reused {
                from: ReusedFrom {
                    job_id: Uuid::nil(),
                    custom_id: "a".into(),
                },
                output: json!({}),
                resolved_model: None,
                batch_pico_usd: 1,
                individual_pico_usd: 2,
            }),
        )]
        .into();
        let mut originals: HashMap<String, i64> = [("before".to_string(), 3)].into();
        let mut items = vec![
            item(Some("k")),
            item(None),
            item(Some("k")),
            item(Some("old")),
            item(Some("old")),
            item(Some("before")),
            item(Some("k")),
        ];
        let mut rejected = item(Some("k"));
        rejected.status = ItemStatus::Rejected;
        items.push(rejected);
        let marked = mark(&mut items, 10, &earlier, &mut originals);
        assert_eq!(
            marked,
            Marked {
                reused: 2,
                copies: 3
            }
        );
        let kinds: Vec<String> = items
            .iter()
            .map(|i| match &i.reuse {
                ItemReuse::Sent => format!("sent {}", i.status),
                ItemReuse::From(r) => format!("from {} {}", r.from.custom_id, i.status),
                ItemReuse::CopyOf(p) => format!("copy {p} {}", i.status),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "sent pending",
                "sent pending",
                "copy 10 pending",
                "from a succeeded",
                "from a succeeded",
                "copy 3 pending",
                "copy 10 pending",
                "sent rejected",
            ]
        );
    }
}
