//! The daemon's log: the library's `tracing` events (targets `hasp::serve`
//! and `hasp::access`), written to stderr one line each, as text or JSON.

use tracing_subscriber::filter::{Directive, EnvFilter};

/// How a log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `TIMESTAMP LEVEL TARGET: MESSAGE key=value ...`
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message`
    /// and the fields.
    Json,
}

/// The level words `--log` takes on their own.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `--log` value: a level, or filter directives as `RUST_LOG`
/// takes them (`hasp::access=info,warn`).
pub fn check(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bare = !text.contains(['=', ',', '[', ':']);
    if bare && !LEVELS.contains(&text.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{text:?} is not a level ({}) or a filter such as hasp::access=info,warn",
            LEVELS.join(", ")
        ));
    }
    for directive in text.split(',').filter(|d| !d.trim().is_empty()) {
        directive
            .parse::<Directive>()
            .map_err(|e| format!("{directive:?} is not a filter directive: {e}"))?;
    }
    Ok(text.to_string())
}

/// The filter a `--log` value stands for. The level words name the
/// daemon's levels: `info` (the default) says what the daemon does but not
/// each request; `debug` adds one line per request (the `hasp::access`
/// events, which are INFO). Anything else is taken as written, but for
/// levels below INFO, which release builds compile out (they read INFO).
fn directives(text: &str) -> String {
    if text.eq_ignore_ascii_case("info") {
        return "info,hasp::access=off".to_string();
    }
    let capped = text.split(',').map(|directive| {
        let (head, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, directive),
        };
        let below_info = ["debug", "trace", "4", "5"]
            .iter()
            .any(|l| level.trim().eq_ignore_ascii_case(l));
        match (head, below_info) {
            (Some(target), true) => format!("{target}=info"),
            (None, true) => "info".to_string(),
            _ => directive.to_string(),
        }
    });
    capped.collect::<Vec<_>>().join(",")
}

/// Sends the process's `tracing` events to stderr, filtered by `filter`
/// (a value [`check`] accepted).
pub fn install(filter: &str, format: Format) {
    let filter = EnvFilter::try_new(directives(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only fails if a subscriber is installed already: that one stays.
    let _ = match format {
        Format::Text => lines.try_init(),
        Format::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
