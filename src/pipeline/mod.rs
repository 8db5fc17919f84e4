//! The pipeline: the worker kernel (`kernel`: context, loop runner, leases, settle, typed
//! step errors), outcomes and retry rules shared by both paths, and the steps the kernel
//! runs: batch (planner, submitter, poller, ingester, janitor), individual calls, webhook
//! deliveries. Steps talk to each other only through the store and reach the model vendor
//! only through `providers::Provider`.

pub mod batch;
pub mod individual;
pub mod kernel;
pub mod outcomes;
pub mod retry;
pub mod webhooks;
pub mod workers;

pub use kernel::{LeaseKeeper, LeaseWatch, StepError, WorkerContext};

/// Items per individual shard: small, so jobs interleave finely. The planner cuts
/// individual jobs by it; the executor claims by it.
pub const INDIVIDUAL_SHARD_ITEMS: usize = 8;
