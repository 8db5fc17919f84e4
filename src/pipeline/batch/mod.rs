//! The Batch API path: planner → JSONL writer → submitter → poller → ingester, plus the
//! janitor of their files. Each step claims rows with a lease and runs through the kernel
//! (`pipeline::kernel`), which keeps a shard's lease alive while a step runs on it, so a
//! slow upload, download or retry back-off never lets another worker take the same shard
//! up halfway. The steps talk to each other only through the store.

pub mod ingest;
pub mod janitor;
pub mod jsonl;
pub mod planner;
pub mod poller;
pub mod submitter;
pub mod tokens;
