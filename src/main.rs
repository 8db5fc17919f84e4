//! The batchlens binary: `serve` (the default) runs the service; the other commands are the
//! command-line client (`batchlens::cli`). Arguments are parsed before anything else, so
//! `--help`, `--version` and a mistyped argument neither start the service nor create
//! `./data`.

use batchlens::cli::ClientCommand;
use batchlens::config::Settings;
use batchlens::startup::{shutdown_signal, Application};
use batchlens::telemetry;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "batchlens",
    version,
    about = "Turns image sets into structured vision analyses through the OpenAI Batch API",
    long_about = "Turns image sets into structured vision analyses through the OpenAI Batch API.\n\n\
                  Without a command it runs the service (`batchlens serve`); the other commands \
                  are a client of a running service (BATCHLENS_URL, BATCHLENS_API_KEY)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (configured by batchlens.toml and BATCHLENS__* variables).
    Serve,
    /// Manage API keys in the service's database (DATABASE_URL / the config, like `serve`).
    Keys {
        #[command(subcommand)]
        command: batchlens::keys::KeysCommand,
    },
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => serve().await,
        Some(Command::Keys { command }) => std::process::exit(batchlens::keys::run(command).await),
        Some(Command::Client(command)) => std::process::exit(batchlens::cli::run(*command).await),
    }
}

async fn serve() {
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
