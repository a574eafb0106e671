//! The `switchyard` command: `serve`, `repo check`, `perf`. Parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use switchyard::config::{Override, Settings};

mod cli;

// Requests allocate and free many small buffers across threads (h2 frames, protobuf messages,
// tensors); mimalloc's per-thread free lists cost less per call than glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A multi-model inference server speaking Triton's gRPC protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of a repository over gRPC.
    Serve(cli::ServeArgs),
    /// Work with a model repository offline.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Read or change which version of a model takes requests that name none.
    Traffic(cli::TrafficArgs),
    /// Load test a model over the Triton gRPC protocol (closed loop, like perf_analyzer).
    Perf(switchyard::perf::PerfArgs),
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Load every model of a repository without serving and report, per model, what would serve.
    Check {
        /// The repository directory.
        dir: PathBuf,
    },
}

/// Exit code for unusable settings (EX_USAGE).
const EXIT_BAD_SETTINGS: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let overrides: Vec<Override> = args.overrides();
            match Settings::load(args.config.as_deref(), std::env::vars(), overrides) {
                Ok(settings) => cli::serve(settings),
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    ExitCode::from(EXIT_BAD_SETTINGS)
                }
            }
        }
        Command::Repo {
            command: RepoCommand::Check { dir },
        } => cli::repo_check(dir),
        Command::Perf(args) => cli::perf(args),
        Command::Traffic(args) => cli::traffic(args),
    }
}
