//! Command-line arguments of `switchyard perf` and the entry point that runs them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{PerfError, PerfOptions, PerfReport, format_table, run};

/// Upper bound on the number of levels a range may expand to.
const MAX_LEVELS: usize = 1024;

/// A parsed `--concurrency-range` (the expanded list of levels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyRange(pub Vec<usize>);

/// Parses `START[:END[:STEP]]` (`perf_analyzer` syntax; END defaults to START, STEP to 1).
pub fn parse_concurrency_range(s: &str) -> Result<ConcurrencyRange, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 3 {
        return Err(format!("expected START[:END[:STEP]], got {s:?}"));
    }
    let num = |p: &str| {
        p.trim()
            .parse::<usize>()
            .map_err(|e| format!("{p:?} in {s:?}: {e}"))
    };
    let start = num(parts[0])?;
    let end = parts.get(1).map(|p| num(p)).transpose()?.unwrap_or(start);
    let step = parts.get(2).map(|p| num(p)).transpose()?.unwrap_or(1);
    if start == 0 || step == 0 || end < start {
        return Err(format!("need 1 <= START <= END and STEP >= 1, got {s:?}"));
    }
    let levels: Vec<usize> = (start..=end).step_by(step).collect();
    if levels.len() > MAX_LEVELS {
        return Err(format!(
            "{s:?} expands to {} levels (at most {MAX_LEVELS})",
            levels.len()
        ));
    }
    Ok(ConcurrencyRange(levels))
}

/// Parses `NAME:D1,D2,...` for `--shape`.
fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected NAME:D1,D2,..., got {s:?}"))?;
    let dims = dims
        .split(',')
        .map(|d| match d.trim().parse::<i64>() {
            Ok(v) if v >= 0 => Ok(v),
            _ => Err(format!("bad dimension {d:?} in {s:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s:?}: {e}"))
}

/// Load test a model over the Triton gRPC protocol (closed loop, like perf_analyzer).
#[derive(Debug, Clone, clap::Args)]
pub struct PerfArgs {
    /// Server gRPC address (`http://host:port` or `host:port`).
    #[arg(short = 'u', long, default_value = "http://127.0.0.1:8001")]
    pub url: String,
    /// Model name.
    #[arg(short = 'm', long)]
    pub model: String,
    /// Model version (default: the server's choice).
    #[arg(short = 'x', long = "model-version")]
    pub model_version: Option<String>,
    /// Concurrency levels as START[:END[:STEP]], e.g. 1:32:8 → 1,9,17,25.
    #[arg(long, value_name = "START:END:STEP", value_parser = parse_concurrency_range,
          conflicts_with = "concurrency")]
    pub concurrency_range: Option<ConcurrencyRange>,
    /// Concurrency levels as a list, e.g. 1,8,32 (default: 1).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub concurrency: Vec<usize>,
    /// Measurement window per level, seconds.
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    pub measurement_secs: Duration,
    /// Warm-up per level before measuring, seconds (not counted).
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub warmup_secs: Duration,
    /// Batch size: replaces the first variable dimension of every input.
    #[arg(short = 'b', long, default_value_t = 1)]
    pub batch_size: usize,
    /// Maximum HTTP/2 connections per level; tasks share them round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Client threads, each owning its share of the connections (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Full shape of an input, as sent (repeatable), e.g. --shape INPUT0:1,16.
    #[arg(long, value_name = "NAME:D1,D2,...", value_parser = parse_shape)]
    pub shape: Vec<(String, Vec<i64>)>,
    /// Deadline of one request, seconds; slower requests count as DeadlineExceeded.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub request_timeout_secs: Duration,
    /// Send the `routing_key` request parameter (a string), cycling through N distinct keys
    /// `user-0` .. `user-{N-1}`, so that a model with a sticky traffic policy (`routing_key` in
    /// its `traffic.yaml`) routes the requests by key; 0 (default) sends no key.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub routing_keys: usize,
    /// Also write the reports as a JSON array to PATH (`-`: stdout, the table then goes to stderr).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

impl PerfArgs {
    /// The options these arguments describe.
    pub fn to_options(&self) -> PerfOptions {
        let concurrency = match (&self.concurrency_range, self.concurrency.is_empty()) {
            (Some(range), _) => range.0.clone(),
            (None, false) => self.concurrency.clone(),
            (None, true) => vec![1],
        };
        PerfOptions {
            url: self.url.clone(),
            model: self.model.clone(),
            version: self.model_version.clone(),
            concurrency,
            duration: self.measurement_secs,
            warmup: self.warmup_secs,
            batch: self.batch_size,
            connections: self.connections,
            shapes: self.shape.iter().cloned().collect::<HashMap<_, _>>(),
            request_timeout: self.request_timeout_secs,
            threads: self.threads.unwrap_or_else(super::default_threads),
            routing_keys: self.routing_keys,
        }
    }
}

/// Runs `switchyard perf`: measures every level, prints the table, writes JSON if asked.
pub async fn main_with(args: PerfArgs) -> Result<Vec<PerfReport>, PerfError> {
    let reports = run(&args.to_options()).await?;
    let table = format_table(&reports);
    match &args.json {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
        Some(path) => {
            print!("{table}");
            let text = serde_json::to_string_pretty(&reports)? + "\n";
            std::fs::write(path, text).map_err(|source| PerfError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        None => print!("{table}"),
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        perf: PerfArgs,
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_concurrency_range("1:32:8").unwrap().0,
            vec![1, 9, 17, 25]
        );
        assert_eq!(parse_concurrency_range("4").unwrap().0, vec![4]);
        assert_eq!(parse_concurrency_range("2:4").unwrap().0, vec![2, 3, 4]);
        assert!(parse_concurrency_range("0:4").is_err());
        assert!(parse_concurrency_range("4:2").is_err());
        assert!(parse_concurrency_range("1:2:0").is_err());
        assert!(parse_concurrency_range("1:2:3:4").is_err());
    }

    #[test]
    fn args_to_options() {
        let cli = Cli::parse_from([
            "perf",
            "-m",
            "simple",
            "--concurrency",
            "1,8",
            "-b",
            "2",
            "--measurement-secs",
            "0.5",
            "--shape",
            "INPUT0:2,16",
            "-x",
            "3",
            "--routing-keys",
            "1000",
        ]);
        let o = cli.perf.to_options();
        assert_eq!(o.concurrency, vec![1, 8]);
        assert_eq!(o.batch, 2);
        assert_eq!(o.duration, Duration::from_millis(500));
        assert_eq!(o.version.as_deref(), Some("3"));
        assert_eq!(o.shapes["INPUT0"], vec![2, 16]);
        assert_eq!(o.url, "http://127.0.0.1:8001");
        assert_eq!(o.routing_keys, 1000);
        let cli = Cli::parse_from(["perf", "-m", "s", "--concurrency-range", "2:6:2"]);
        assert_eq!(cli.perf.to_options().concurrency, vec![2, 4, 6]);
        assert_eq!(cli.perf.to_options().routing_keys, 0);
        assert!(
            Cli::try_parse_from([
                "perf",
                "-m",
                "s",
                "--concurrency-range",
                "1",
                "--concurrency",
                "2"
            ])
            .is_err()
        );
        assert_eq!(
            Cli::parse_from(["perf", "-m", "s"])
                .perf
                .to_options()
                .concurrency,
            vec![1]
        );
    }
}
