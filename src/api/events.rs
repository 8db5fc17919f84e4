//! `GET /v1/jobs/{id}/events`: a job's progress and status as Server-Sent Events.
//!
//! Cadence ([`Cadence`], a clock-free state machine the handler drives): the job's event
//! log (the figure of every counter change, every transition) is read every
//! [`WATCH_EVERY`]; a changed progress is sent at most once per [`PROGRESS_EVERY`]
//! (changes within the second coalesce, the latest figure wins, sent when the second is
//! up); a heartbeat comment (`: keep-alive`) goes out after `server.events_heartbeat_ms`
//! without an event, so proxies keep the stream open. `percent` never goes backwards:
//! when a retry re-opens items, a `reopened` event says how many before the lower
//! figure; any other lower figure (a finished batch between its last poll and the end of
//! its ingest, when its lines are neither in flight nor settled) is held back until the
//! figure is back.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Tenant;
use super::dto::{JobEvent, Progress};
use super::extract::ApiPath;
use super::jobs::load_job;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::domain::{Counts, JobStatus};

/// At most one `progress` event per job and stream in this time.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often a stream reads its job's event log.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(job_events))
}

/// Progress and state changes as Server-Sent Events.
///
/// Events: `status` (data: `{"status": …}`), `progress` (data: the job's `progress`
/// object) and `reopened` (data: `{"items": n, "reason": "retry"}`). The stream opens
/// with the current status and progress and ends after the terminal status. A `progress`
/// event is sent whenever the progress changes, in-flight batch counts included, at most
/// one a second per job: changes within the second coalesce and the latest figure is sent
/// when the second is up. `percent` never goes backwards except when a retry re-opens
/// items (lines of a failed or expired batch, or failed lines worth another attempt, sent
/// back to run again): a `reopened` event with the number of items then comes before the
/// lower `progress`. A comment line
/// `: keep-alive` is sent after 15 s without an event (`server.events_heartbeat_ms`), so
/// proxies keep the stream open.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "text/event-stream of status, progress and reopened events", content_type = "text/event-stream", body = JobEvent),
              (status = 401, description = "Missing or unknown API key", body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn job_events(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let job = load_job(&state, &tenant, id).await?;
    let first = Reading {
        status: job.status,
        counts: job.counts,
        processing: state.app.job_processing(id).await?,
    };
    // The log from here on (read after the job: replaying older figures could look like
    // items going back; an entry written in between is not lost, since every entry
    // carries the whole figure and the next one brings it).
    let after_id = state.app.last_event_id(id).await?;
    let now = Instant::now();
    let (cadence, opening) = Cadence::start(first, now);
    let heartbeat = Duration::from_millis(state.app.settings.server.events_heartbeat_ms);
    let watch = Watch {
        cadence,
        next_read: now + WATCH_EVERY,
        checked_at: now,
        after_id,
    };
    let tail = futures::stream::unfold((state, watch), move |(state, mut w)| async move {
        loop {
            if w.cadence.ended() {
                return None;
            }
            let wake = w.cadence.due().map_or(w.next_read, |d| d.min(w.next_read));
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            let out = if now >= w.next_read {
                w.next_read = now + WATCH_EVERY;
                match w.step(&state, id, now).await {
                    Ok(Some(out)) => out,
                    // Gone (deleted): nothing more to say.
                    Ok(None) => return None,
                    Err(err) => {
                        tracing::warn!(job = %id, error = %err, "events: could not read the job");
                        Vec::new()
                    }
                }
            } else {
                w.cadence.flush(now)
            };
            if !out.is_empty() {
                return Some((futures::stream::iter(out), (state, w)));
            }
        }
    })
    .flatten();
    let stream = futures::stream::iter(opening)
        .chain(tail)
        .map(|out| Ok(out.event()));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("keep-alive")))
}

/// Events read from the log per round.
const LOG_PAGE: i64 = 500;
/// With nothing in the log for this long, the job row is read anyway.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One stream's position: its cadence, the last log entry it read, when it reads next.
struct Watch {
    cadence: Cadence,
    next_read: Instant,
    checked_at: Instant,
    after_id: i64,
}

impl Watch {
    /// Reads what the job's log gained (every counter change writes a `progress` entry
    /// with the figure of its transaction, every transition a `status` entry), so each
    /// step of a job is seen, however short; answers the events to send now, or None when
    /// the job is gone.
    async fn step(
        &mut self,
        state: &AppState,
        id: Uuid,
        now: Instant,
    ) -> Result<Option<Vec<Out>>, crate::app::AppError> {
        let log = state.app.events_after(id, self.after_id, LOG_PAGE).await?;
        if log.len() as i64 == LOG_PAGE {
            self.next_read = now; // more to read
        }
        if log.is_empty() {
            if now < self.checked_at + CHECK_EVERY {
                return Ok(Some(self.cadence.flush(now)));
            }
            self.checked_at = now;
            return Ok(read(state, id).await?.map(|r| self.cadence.observe(r, now)));
        }
        self.checked_at = now;
        let mut out = Vec::new();
        for entry in log {
            self.after_id = entry.id;
            let mut r = self.cadence.last();
            match entry.kind.as_str() {
                "progress" => {
                    let Ok(counts) = serde_json::from_value::<Counts>(entry.data.clone()) else {
                        continue;
                    };
                    r.counts = counts;
                    r.processing = entry.data["processing"].as_i64().unwrap_or(0);
                }
                "status" => {
                    let Ok(status) = serde_json::from_value(entry.data["status"].clone()) else {
                        continue;
                    };
                    r.status = status;
                }
                _ => continue,
            }
            out.extend(self.cadence.observe(r, now));
        }
        Ok(Some(out))
    }
}

async fn read(state: &AppState, id: Uuid) -> Result<Option<Reading>, crate::app::AppError> {
    let Some(job) = state.app.job_now(id).await? else {
        return Ok(None);
    };
    let processing = state.app.job_processing(id).await?;
    Ok(Some(Reading {
        status: job.status,
        counts: job.counts,
        processing,
    }))
}

/// What a stream reads of its job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub status: JobStatus,
    pub counts: Counts,
    pub processing: i64,
}

/// A figure: the counters and the in-flight batch lines.
type Figure = (Counts, i64);

fn percent((counts, processing): Figure) -> f64 {
    counts.percent_with(processing)
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Status(JobStatus),
    Progress(Counts, i64),
    /// Items a retry sent back to be run again.
    Reopened(i64),
}

impl Out {
    fn event(&self) -> SseEvent {
        let (kind, data) = match self {
            Out::Status(status) => ("status", serde_json::json!({ "status": status })),
            Out::Progress(counts, processing) => (
                "progress",
                serde_json::to_value(Progress::new(*counts, *processing)).unwrap_or_default(),
            ),
            Out::Reopened(items) => (
                "reopened",
                serde_json::json!({"items": items, "reason": "retry"}),
            ),
        };
        SseEvent::default().event(kind).data(data.to_string())
    }
}

/// When each event of one stream goes out, given what it read and when.
#[derive(Debug)]
pub struct Cadence {
    last: Reading,
    sent: Figure,
    sent_at: Instant,
    /// The latest figure not sent yet.
    pending: Option<Figure>,
    /// Items re-opened since the last `progress` sent.
    reopened: i64,
    /// A terminal status, sent once the pending figure is.
    ending: Option<JobStatus>,
    ended: bool,
}

impl Cadence {
    /// The stream's first events: the status and the progress as they are.
    pub fn start(first: Reading, now: Instant) -> (Cadence, Vec<Out>) {
        let figure = (first.counts, first.processing);
        let cadence = Cadence {
            last: first,
            sent: figure,
            sent_at: now,
            pending: None,
            reopened: 0,
            ending: None,
            ended: first.status.is_terminal(),
        };
        let opening = vec![Out::Status(first.status), Out::Progress(figure.0, figure.1)];
        (cadence, opening)
    }

    /// The latest reading.
    pub fn last(&self) -> Reading {
        self.last
    }

    /// Whether the terminal status was sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// When the pending figure may go out.
    pub fn due(&self) -> Option<Instant> {
        self.pending.map(|_| self.sent_at + PROGRESS_EVERY)
    }

    /// Takes a reading; answers the events to send now.
    pub fn observe(&mut self, r: Reading, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        // Items go back to pending only when a retry re-opens them (the total is fixed
        // once the job is submitted; an open job's appends raise it).
        if r.counts.total == self.last.counts.total && r.counts.pending > self.last.counts.pending {
            self.reopened += r.counts.pending - self.last.counts.pending;
        }
        let figure = (r.counts, r.processing);
        if figure != (self.last.counts, self.last.processing) {
            let shown = self.pending.map_or(percent(self.sent), percent);
            let terminal = r.status.is_terminal();
            if terminal || self.reopened > 0 || percent(figure) >= shown {
                self.pending = Some(figure);
            }
        }
        if r.status != self.last.status {
            if r.status.is_terminal() {
                self.ending = Some(r.status);
            } else {
                out.push(Out::Status(r.status));
            }
        }
        self.last = r;
        out.extend(self.flush(now));
        out
    }

    /// The pending figure once its second is up, and then a terminal status.
    pub fn flush(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some(figure) = self.pending {
            if now >= self.sent_at + PROGRESS_EVERY {
                self.pending = None;
                if figure != self.sent {
                    if self.reopened > 0 {
                        out.push(Out::Reopened(self.reopened));
                        self.reopened = 0;
                    }
                    out.push(Out::Progress(figure.0, figure.1));
                    self.sent = figure;
                    self.sent_at = now;
                }
            }
        }
        if self.pending.is_none() {
            if let Some(status) = self.ending.take() {
                out.push(Out::Status(status));
                self.ended = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: i64, pending: i64, submitted: i64, succeeded: i64) -> Counts {
        Counts {
            total,
            pending,
            submitted,
            succeeded,
            ..Counts::default()
        }
    }

    fn reading(status: JobStatus, c: Counts, processing: i64) -> Reading {
        Reading {
            status,
            counts: c,
            processing,
        }
    }

    fn running(processing: i64) -> Reading {
        reading(JobStatus::Running, counts(10, 0, 10, 0), processing)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn percents(out: &[Out]) -> Vec<f64> {
        out.iter()
            .filter_map(|o| match o {
                Out::Progress(c, p) => Some(c.percent_with(*p)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn opens_with_status_and_progress_and_coalesces_within_the_second() {
        let t0 = Instant::now();
        let (mut c, opening) = Cadence::start(running(0), t0);
        assert_eq!(
            opening,
            vec![
                Out::Status(JobStatus::Running),
                Out::Progress(counts(10, 0, 10, 0), 0)
            ]
        );
        for (at, processing) in [(100, 1), (200, 3), (300, 4)] {
            assert_eq!(c.observe(running(processing), t0 + ms(at)), vec![]);
        }
        assert_eq!(c.due(), Some(t0 + PROGRESS_EVERY));
        assert_eq!(c.flush(t0 + ms(999)), vec![]);
        // The latest figure wins, sent when the second is up.
        assert_eq!(
            c.flush(t0 + ms(1000)),
            vec![Out::Progress(counts(10, 0, 10, 0), 4)]
        );
        assert_eq!(c.due(), None);
        // Unchanged readings send nothing.
        assert_eq!(c.observe(running(4), t0 + ms(2500)), vec![]);
        // A change after a quiet spell goes out at once.
        assert_eq!(
            c.observe(running(5), t0 + ms(2600)),
            vec![Out::Progress(counts(10, 0, 10, 0), 5)]
        );
    }

    #[test]
    fn never_two_progress_events_within_a_second() {
        let job = |processing| reading(JobStatus::Running, counts(1000, 0, 1000, 0), processing);
        let t0 = Instant::now();
        let (mut c, _) = Cadence::start(job(0), t0);
        let mut sent = vec![(t0, 0)];
        // A reading every 70 ms for 10 s, the figure rising on every one.
        for step in 1..=140i64 {
            let now = t0 + ms(step as u64 * 70);
            for out in c.observe(job(step * 7), now) {
                if let Out::Progress(_, processing) = out {
                    sent.push((now, processing));
                }
            }
        }
        assert!(sent.len() >= 9, "{sent:?}");
        for pair in sent.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= PROGRESS_EVERY, "{sent:?}");
            assert!(pair[1].1 > pair[0].1, "{sent:?}");
        }
        // The latest figure wins: each one sent is the reading of its moment.
        for (at, processing) in &sent[1..] {
            assert_eq!(*processing, ((*at - t0).as_millis() / 70) as i64 * 7);
        }
        // The last figure goes out when its second is up.
        let due = c.due().unwrap();
        assert_eq!(
            c.flush(due),
            vec![Out::Progress(counts(1000, 0, 1000, 0), 980)]
        );
    }

    #[test]
    fn a_retry_says_reopened_before_the_lower_figure() {
        let t0 = Instant::now();
        let (mut c, _) = Cadence::start(running(6), t0);
        // The batch failed after reporting 6 lines done: all 10 items go back to pending.
        let back = reading(JobStatus::Running, counts(10, 10, 0, 0), 0);
        assert_eq!(c.observe(back, t0 + ms(500)), vec![]);
        let out = c.flush(t0 + ms(1000));
        assert_eq!(
            out,
            vec![Out::Reopened(10), Out::Progress(counts(10, 10, 0, 0), 0)]
        );
        assert_eq!(percents(&out), vec![0.0]);
    }

    #[test]
    fn a_dip_during_ingest_is_held_back() {
        let t0 = Instant::now();
        let (mut c, _) = Cadence::start(running(8), t0);
        // The batch ended: its lines are no longer in flight, and not all settled yet.
        let ingesting = reading(JobStatus::Running, counts(10, 0, 8, 2), 0);
        assert_eq!(c.observe(ingesting, t0 + ms(1500)), vec![]);
        assert_eq!(c.flush(t0 + ms(3000)), vec![]);
        let settled = reading(JobStatus::Running, counts(10, 0, 1, 9), 0);
        let out = c.observe(settled, t0 + ms(3100));
        assert_eq!(percents(&out), vec![90.0]);
    }

    #[test]
    fn the_terminal_status_waits_for_the_last_figure_and_ends() {
        let t0 = Instant::now();
        let (mut c, _) = Cadence::start(running(2), t0);
        let done = reading(JobStatus::Completed, counts(10, 0, 0, 10), 0);
        assert_eq!(c.observe(done, t0 + ms(300)), vec![]);
        assert!(!c.ended());
        assert_eq!(
            c.flush(t0 + ms(1000)),
            vec![
                Out::Progress(counts(10, 0, 0, 10), 0),
                Out::Status(JobStatus::Completed)
            ]
        );
        assert!(c.ended());
        // A non-terminal status goes out at once.
        let (mut c, _) = Cadence::start(reading(JobStatus::Queued, counts(4, 4, 0, 0), 0), t0);
        let r = reading(JobStatus::Running, counts(4, 4, 0, 0), 0);
        assert_eq!(
            c.observe(r, t0 + ms(10)),
            vec![Out::Status(JobStatus::Running)]
        );
    }
}
