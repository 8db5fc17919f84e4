//! The batchlens service binary: configuration, tracing, the application, until a signal.

use batchlens::config::Settings;
use batchlens::startup::{shutdown_signal, Application};
use batchlens::telemetry;

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("batchlens: {err}");
            std::process::exit(2);
        }
    };
    telemetry::init(&settings.log);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "batchlens could not start");
            eprintln!("batchlens: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = app.run_until_stopped(shutdown_signal()).await {
        tracing::error!(error = %err, "batchlens stopped with an error");
        std::process::exit(1);
    }
}

/// `batchlens healthcheck`: exit 0 when this host's service answers `/healthz` with 200.
/// For container health checks in images without curl.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    let port = Settings::load().map(|s| s.server.port).unwrap_or(8080);
    let probe = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => 0,
        _ => 1,
    }
}
