//! The component's own command line, for the stock `wasmtime run`:
//!
//! ```text
//! wasmtime run --dir ./locks::/locks hasp.wasm lock resource1 --client client1
//! ```
//!
//! Same rules, on-disk states and messages as `hasp lock`, `hasp unlock` and
//! `hasp status`, because they are the same registry code; the output and
//! the exit codes (0 done, 1 refused, 2 failed) match the `hasp` CLI's.
//! Process locks (`run`, `who`) need the host's `hasp:lock/file-lock`,
//! which a stock runtime does not have: they say so and exit 2.

use crate::hasp::lock::types::{Error, ErrorCode, Holder, LockOptions, UnlockKey};
use crate::registry::Registry;
use crate::show;
use hasp_text::json;
use wasip2::cli::environment::get_arguments;
use wasip2::filesystem::preopens::get_directories;

const USAGE: &str = "\
usage: hasp.wasm [--dir GUEST_DIR] COMMAND
  lock RESOURCE [--client ID] [--ttl DURATION] [--no-lock-parents] [--no-lock-children] [--json] [-v]
  unlock RESOURCE (--client ID | --token TOKEN | --force)
  renew RESOURCE (--client ID | --token TOKEN) [--ttl DURATION]
  status [RESOURCE] [--json]
DURATION: 30s, 5m, 1500ms, 2h; a bare number is seconds.
GUEST_DIR is the lock directory as the runtime preopened it (`--dir HOST::GUEST`
for wasmtime); without --dir, the only preopen.";

/// The options that take a value (`--name VALUE`).
const VALUE_OPTIONS: [&str; 4] = ["--dir", "--client", "--token", "--ttl"];

/// Exports `wasi:cli/run`.
pub struct Command;

impl wasip2::exports::cli::run::Guest for Command {
    fn run() -> Result<(), ()> {
        let args: Vec<String> = get_arguments().into_iter().skip(1).collect();
        let (out, code) = match main(&args) {
            Ok(text) => (Output::Out(text), 0),
            Err(Failure::Usage(text)) => (Output::Err(format!("{text}\n{USAGE}\n")), 2),
            Err(Failure::Other(text)) => (Output::Err(format!("{text}\n")), 2),
            Err(Failure::Call(err, dir)) => {
                let refused = hasp_text::is_refusal(crate::errors::code_name(&err.code));
                let text = match err.code {
                    ErrorCode::Storage(_) | ErrorCode::CorruptRecord(_) => {
                        format!("{} (lock directory {dir})\n", err.message)
                    }
                    _ => format!("{}\n", err.message),
                };
                (Output::Err(text), if refused { 1 } else { 2 })
            }
        };
        match out {
            Output::Out(text) => write_all(&wasip2::cli::stdout::get_stdout(), &text),
            Output::Err(text) => write_all(&wasip2::cli::stderr::get_stderr(), &text),
        }
        if code == 0 {
            Ok(())
        } else {
            wasip2::cli::exit::exit_with_code(code);
            Err(())
        }
    }
}

enum Output {
    Out(String),
    Err(String),
}

enum Failure {
    /// Bad arguments: the text, then the usage.
    Usage(String),
    /// A refusal or failure from the registry on the directory named.
    Call(Error, String),
    Other(String),
}

fn write_all(stream: &wasip2::io::streams::OutputStream, text: &str) {
    for chunk in text.as_bytes().chunks(4096) {
        let _ = stream.blocking_write_and_flush(chunk);
    }
}

/// Runs one command; its standard output.
fn main(args: &[String]) -> Result<String, Failure> {
    let mut args = Args::new(args);
    let dir = args.value("--dir")?;
    let Some(command) = args.positional() else {
        return Err(Failure::Usage("no command given".into()));
    };
    match command.as_str() {
        "help" | "--help" | "-h" => return Ok(format!("{USAGE}\n")),
        "run" | "who" => {
            return Err(Failure::Other(format!(
                "`{command}` takes OS file locks through hasp:lock/file-lock, which only the \
                 hasp host provides (this runtime does not); use `hasp {command}` instead"
            )))
        }
        "lock" | "unlock" | "renew" | "status" => {}
        other => return Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
    let dir = match dir {
        Some(dir) => dir,
        None => only_preopen()?,
    };
    let call = |err: Error| Failure::Call(err, dir.clone());
    match command.as_str() {
        "lock" => {
            let resource = args.required("RESOURCE")?;
            let client = args.value("--client")?;
            let ttl_ms = ttl(&mut args)?;
            let lock_parents = !args.flag("--no-lock-parents");
            let lock_children = !args.flag("--no-lock-children");
            let json = args.flag("--json");
            let verbose = args.flag("-v") | args.flag("--verbose");
            args.done()?;
            let registry = Registry::open(&dir).map_err(call)?;
            let anonymous = client.is_none();
            let options = LockOptions {
                client,
                lock_parents,
                lock_children,
                ttl_ms,
                request_id: None,
            };
            let grant = registry.lock(&resource, &options).map_err(call)?;
            Ok(if json {
                format!(
                    "{}\n",
                    json::object(&lock(&grant.holder), Some(&grant.token))
                )
            } else if verbose {
                format!(
                    "token: {}\nfencing: {}\n",
                    grant.token, grant.holder.fencing
                )
            } else if anonymous {
                // Without a client id only the token opens it: never lose it.
                format!("{}\n", grant.token)
            } else {
                String::new()
            })
        }
        "unlock" | "renew" => {
            let resource = args.required("RESOURCE")?;
            let force = command == "unlock" && args.flag("--force");
            let ttl_ms = if command == "renew" {
                ttl(&mut args)?
            } else {
                None
            };
            let key = match (args.value("--client")?, args.value("--token")?, force) {
                (Some(client), None, false) => Some(UnlockKey::Client(client)),
                (None, Some(token), false) => Some(UnlockKey::Token(token)),
                (None, None, true) => None,
                _ if command == "unlock" => {
                    return Err(Failure::Usage(
                        "give one of --client, --token or --force".into(),
                    ))
                }
                _ => return Err(Failure::Usage("give one of --client or --token".into())),
            };
            args.done()?;
            let registry = Registry::open(&dir).map_err(call)?;
            match key {
                None => {
                    let broken = registry.force_unlock(&resource).map_err(call)?;
                    Ok(format!(
                        "{}\n",
                        show::broke(&broken.resource, broken.client.as_deref(), broken.fencing)
                    ))
                }
                Some(key) if command == "renew" => {
                    registry.renew(&resource, &key, ttl_ms).map_err(call)?;
                    Ok(String::new())
                }
                Some(key) => {
                    registry.unlock(&resource, &key).map_err(call)?;
                    Ok(String::new())
                }
            }
        }
        _ => {
            let resource = args.positional();
            let json = args.flag("--json");
            args.done()?;
            let registry = Registry::open(&dir).map_err(call)?;
            match resource {
                Some(resource) => {
                    let held = registry.status(&resource).map_err(call)?;
                    Ok(match (held, json) {
                        (Some(h), true) => format!("{}\n", json::object(&lock(&h), None)),
                        (None, true) => "null\n".into(),
                        (Some(h), false) => show::table(&[lock(&h)]),
                        (None, false) => format!("{}\n", hasp_text::NOT_LOCKED),
                    })
                }
                None => {
                    let all = registry.list("").map_err(call)?;
                    Ok(if json {
                        format!("{}\n", json::array(all.iter().map(lock)))
                    } else {
                        show::table(&all.iter().map(lock).collect::<Vec<_>>())
                    })
                }
            }
        }
    }
}

/// The preopen to use when `--dir` is not given: the only one there is.
fn only_preopen() -> Result<String, Failure> {
    let names: Vec<String> = get_directories().into_iter().map(|(_, n)| n).collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::Other(
            "no lock directory: preopen one, e.g. `wasmtime run --dir ./locks::/locks hasp.wasm ...`"
                .into(),
        )),
        many => Err(Failure::Other(format!(
            "several preopened directories ({}): choose one with --dir",
            many.join(", ")
        ))),
    }
}

/// Takes `--ttl DURATION`, in milliseconds.
fn ttl(args: &mut Args) -> Result<Option<u64>, Failure> {
    match args.value("--ttl")? {
        Some(text) => crate::duration::parse_ms(&text)
            .map(Some)
            .map_err(|why| Failure::Usage(format!("--ttl: {why}"))),
        None => Ok(None),
    }
}

/// A holder as its JSON shows it.
fn lock(h: &Holder) -> hasp_text::Lock<'_> {
    hasp_text::Lock {
        resource: &h.resource,
        client: h.client.as_deref(),
        fencing: h.fencing,
        since_ms: h.since_ms,
        lock_parents: h.lock_parents,
        lock_children: h.lock_children,
        lease: h.expires_ms.zip(h.ttl_ms),
    }
}

/// The arguments after the command name: options anywhere, positionals in order.
struct Args {
    rest: Vec<Option<String>>,
}

impl Args {
    fn new(args: &[String]) -> Args {
        Args {
            rest: args.iter().cloned().map(Some).collect(),
        }
    }

    /// Takes `--name VALUE` or `--name=VALUE`.
    fn value(&mut self, name: &str) -> Result<Option<String>, Failure> {
        let prefix = format!("{name}=");
        for i in 0..self.rest.len() {
            let Some(arg) = self.rest[i].clone() else {
                continue;
            };
            if let Some(value) = arg.strip_prefix(&prefix) {
                self.rest[i] = None;
                return Ok(Some(value.to_string()));
            }
            if arg == name {
                self.rest[i] = None;
                return match self.rest.get_mut(i + 1).and_then(Option::take) {
                    Some(value) => Ok(Some(value)),
                    None => Err(Failure::Usage(format!("{name} needs a value"))),
                };
            }
        }
        Ok(None)
    }

    /// Takes the switch `name`; whether it was there.
    fn flag(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a.as_deref() == Some(name)) {
            Some(i) => {
                self.rest[i] = None;
                true
            }
            None => false,
        }
    }

    /// Takes the next argument that is neither an option nor the value of
    /// one not taken yet (`--client ID` may come before the resource).
    fn positional(&mut self) -> Option<String> {
        let i = (0..self.rest.len()).find(|&i| {
            let value_of_option = i > 0
                && self.rest[i - 1]
                    .as_deref()
                    .is_some_and(|prev| VALUE_OPTIONS.contains(&prev));
            !value_of_option && self.rest[i].as_deref().is_some_and(|a| !a.starts_with('-'))
        })?;
        self.rest[i].take()
    }

    fn required(&mut self, what: &str) -> Result<String, Failure> {
        self.positional()
            .ok_or_else(|| Failure::Usage(format!("missing {what}")))
    }

    /// Fails on anything not taken.
    fn done(&self) -> Result<(), Failure> {
        match self.rest.iter().flatten().next() {
            Some(extra) => Err(Failure::Usage(format!("unexpected argument {extra:?}"))),
            None => Ok(()),
        }
    }
}
