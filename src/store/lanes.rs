//! Read lanes: the connections the store's plain reads (`Dialect::read`) run on, beside
//! the sqlx pool that transactions and writes use.
//!
//! sqlx's pool (0.8) pings a connection when it hands out an idle one and again, from a
//! spawned task, when it takes one back: on PostgreSQL two extra round trips per query, on
//! SQLite two extra hand-offs to the connection's worker thread. Under dashboard polling
//! that was most of a read's cost. A lane skips both: a connection goes back to the idle
//! list only when its read ran to the end ([`Lane::release`]); a read that failed or was
//! cancelled halfway (its future dropped) drops its connection instead, so a connection
//! left mid-result is never reused, which is what the pool's ping on release guards
//! against. Connections open lazily, up to `size` at once.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

pub(crate) struct Lanes<C: Connection> {
    options: C::Options,
    idle: Mutex<Vec<C>>,
    permits: Semaphore,
}

/// A connection taken from the lanes; back to the idle list only through [`Lane::release`].
pub(crate) struct Lane<'a, C: Connection> {
    lanes: &'a Lanes<C>,
    conn: Option<C>,
    /// Whether it served an earlier read (a fresh one is not retried on a broken socket).
    pub reused: bool,
    _permit: SemaphorePermit<'a>,
}

impl<C: Connection> Lanes<C>
where
    C::Options: ConnectOptions<Connection = C>,
{
    pub fn new(options: C::Options, size: usize) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// An idle connection, or a new one while fewer than `size` are open; waits otherwise.
    pub async fn acquire(&self) -> Result<Lane<'_, C>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(Lane {
            lanes: self,
            conn: Some(conn),
            reused,
            _permit: permit,
        })
    }

    /// Refuses new reads and closes the idle connections (reads in flight finish, and
    /// their connections are dropped).
    pub async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in idle {
            let _ = conn.close().await;
        }
    }
}

impl<C: Connection> Lane<'_, C> {
    /// The read ran to its end: the connection goes back to the idle list.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.lanes.permits.is_closed() {
                self.lanes
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
        }
    }
}

impl<C: Connection> Deref for Lane<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("a lane holds its connection until released")
    }
}

impl<C: Connection> DerefMut for Lane<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("a lane holds its connection until released")
    }
}

/// Whether `err` says the connection itself is gone (a socket closed while idle, a
/// worker thread that died), so the same read may run again on a new one.
pub(crate) fn connection_lost(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    )
}

/// All the rows of the query `make` builds, on a lane; run again on another connection
/// when a reused one turns out to be lost (a read changes nothing, so running it twice is
/// safe). Each retry takes the next idle connection, so it ends at a new one at worst.
pub(crate) async fn fetch_all<'q, C, A>(
    lanes: &Lanes<C>,
    make: impl Fn() -> sqlx::query::Query<'q, C::Database, A>,
) -> Result<Vec<<C::Database as sqlx::Database>::Row>, sqlx::Error>
where
    C: Connection,
    C::Options: ConnectOptions<Connection = C>,
    A: sqlx::IntoArguments<'q, C::Database> + 'q,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    loop {
        let mut lane = lanes.acquire().await?;
        match make().fetch_all(&mut *lane).await {
            Ok(rows) => {
                lane.release();
                return Ok(rows);
            }
            Err(err) if lane.reused && connection_lost(&err) => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    #[tokio::test]
    async fn only_a_released_connection_is_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("l.db"))
            .create_if_missing(true);
        let lanes: Lanes<SqliteConnection> = Lanes::new(options, 1);

        let rows = fetch_all(&lanes, || sqlx::query("SELECT 1")).await.unwrap();
        assert_eq!(rows.len(), 1);
        let lane = lanes.acquire().await.unwrap();
        assert!(lane.reused, "the finished read gave its connection back");
        // Dropped without release, as a cancelled read's lane is: never reused.
        drop(lane);
        let lane = lanes.acquire().await.unwrap();
        assert!(!lane.reused);
        lane.release();

        lanes.close().await;
        assert!(matches!(
            lanes.acquire().await.err(),
            Some(sqlx::Error::PoolClosed)
        ));
    }
}
