//! The command-line client: `submit`, `status`, `results`, `estimate`, `healthcheck`. It
//! talks to a batchlens service over HTTP only, like any other client, and imports nothing
//! of the server (`api`, `app`, `store`): the JSON it reads is the contract of API.md.

mod client;
mod estimate;
mod events;
mod progress;
mod results;
mod submit;
pub mod upload;
pub mod walk;

use std::path::PathBuf;

pub use client::{Api, CliError, RetryPolicy};
pub use results::{write_csv, ResultFormat};

/// Where the service is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The service's base URL.
    #[arg(long, env = "BATCHLENS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "BATCHLENS_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// The client commands (`serve` is the binary's own).
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Exit 0 when the service answers /healthz with 200, else 1 (for container checks).
    Healthcheck(HealthcheckArgs),
    /// Upload a folder (or files) of images as one job, optionally wait and write the results.
    Submit(SubmitArgs),
    /// Print a job's status and progress.
    Status(StatusArgs),
    /// Write a job's results as NDJSON or CSV.
    Results(ResultsArgs),
    /// What the images would cost, per model and mode; nothing is sent to OpenAI.
    Estimate(EstimateArgs),
}

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The service's base URL [default: http://127.0.0.1:<server.port from the config>].
    #[arg(long, env = "BATCHLENS_URL")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// A folder (walked recursively) or image files.
    #[arg(required = true, value_name = "DIR or FILES")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub conn: Connection,
    /// The job's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The model (the service's default when absent).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_parser = ["low", "high", "auto"])]
    pub detail: Option<String>,
    #[arg(long, value_parser = ["auto", "batch", "individual", "flex"])]
    pub mode: Option<String>,
    /// Follow the job to its end.
    #[arg(long)]
    pub wait: bool,
    /// Write the results here once the job is done (implies --wait); `.csv` → CSV, else NDJSON.
    #[arg(long, value_name = "results.ndjson|results.csv")]
    pub out: Option<PathBuf>,
    /// Largest request body per upload chunk; keep it under the server's
    /// server.max_body_bytes (64 MiB by default).
    #[arg(long, value_name = "N", default_value_t = upload::DEFAULT_CHUNK_BYTES)]
    pub chunk_bytes: u64,
    /// Chunks uploaded at once: the service checks one while the next arrives.
    #[arg(long, value_name = "N", default_value_t = upload::DEFAULT_PARALLEL)]
    pub parallel: usize,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The job id.
    pub job: String,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    /// The job id.
    pub job: String,
    #[command(flatten)]
    pub conn: Connection,
    /// [default: from --out's extension (`.csv` → csv), else ndjson]
    #[arg(long, value_enum)]
    pub format: Option<ResultFormat>,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    /// A folder (walked recursively) or image files.
    #[arg(required = true, value_name = "DIR or FILES")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub conn: Connection,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_parser = ["low", "high", "auto"])]
    pub detail: Option<String>,
}

/// Runs one client command; the process exit code (0 success, 1 failure).
pub async fn run(command: ClientCommand) -> i32 {
    let outcome = match command {
        ClientCommand::Healthcheck(args) => return client::healthcheck(args.url).await,
        ClientCommand::Submit(args) => submit::run(args).await,
        ClientCommand::Status(args) => results::status(args).await,
        ClientCommand::Results(args) => results::run(args).await,
        ClientCommand::Estimate(args) => estimate::run(args).await,
    };
    match outcome {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("batchlens: {err}");
            1
        }
    }
}
