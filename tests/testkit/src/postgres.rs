//! A PostgreSQL database of one test's own, made from `DATABASE_URL` and dropped after.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

/// A uniquely named database on the server `DATABASE_URL` names; dropped (with `FORCE`, so
/// open connections do not keep it) when this drops, also when the test panics.
pub struct PgDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates `{prefix}_{uuid}`. None, with a message, when `DATABASE_URL` is not a
    /// `postgres://` or `postgresql://` URL; under `CI=true` that is a panic instead, so a
    /// CI run cannot pass by skipping. Panics when the server does not answer.
    pub async fn create(prefix: &str) -> Option<PgDatabase> {
        let admin_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
        let Some(admin_url) = admin_url else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but DATABASE_URL names no PostgreSQL database");
            }
            eprintln!("skipping postgres test: DATABASE_URL not set");
            crate::tally::record(
                crate::tally::Backend::Postgres,
                crate::tally::Outcome::Skipped,
            );
            return None;
        };
        let admin = PgConnectOptions::from_str(&admin_url).expect("DATABASE_URL");
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.expect("connect to DATABASE_URL");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        conn.close().await.ok();
        crate::tally::record(crate::tally::Backend::Postgres, crate::tally::Outcome::Ran);
        let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL");
        url.set_path(&name);
        Some(PgDatabase {
            admin,
            name,
            url: url.into(),
        })
    }

    /// The new database's URL (the admin URL with its path replaced, query kept).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connect options for the new database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop may run inside a test's runtime, which cannot be blocked on: use a thread
        // with a runtime of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut conn = admin.connect().await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
