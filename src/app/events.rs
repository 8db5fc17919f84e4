//! A job's event log as its watchers read it (`/v1/jobs/{id}/events`).

use uuid::Uuid;

use super::{App, AppResult};
use crate::domain::Event;

impl App {
    /// The id of the job's latest event (0 without one): where a new watcher starts.
    pub async fn last_event_id(&self, job_id: Uuid) -> AppResult<i64> {
        Ok(self.store.last_event_id(job_id).await?)
    }

    /// Up to `limit` of the job's events after `after_id`, oldest first.
    pub async fn events_after(
        &self,
        job_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> AppResult<Vec<Event>> {
        Ok(self.store.events_after(job_id, after_id, limit).await?)
    }
}
