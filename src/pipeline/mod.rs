//! The worker kernel and the steps it runs: batch (planner, submitter, poller, ingester,
//! janitor), individual calls, webhook deliveries. Steps talk to each other only through
//! the store.

pub mod batch;
pub mod individual;
pub mod webhooks;
pub mod workers;
