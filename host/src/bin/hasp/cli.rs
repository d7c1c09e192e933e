//! Command-line front door: parses arguments, calls the registry, prints.

use clap::{Args, Parser, Subcommand};
use hasp::{
    Error, FileHolder, FileLock, Grant, Holder, LockOptions, Registry, Store, UnlockKey, Wait,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

// The guest's texts, shared with its own command line: both print (and
// read `--ttl`) alike.
use hasp_text::show::{self, utc};
use hasp_text::{duration, json};

#[derive(Parser)]
#[command(
    name = "hasp",
    version,
    about = "Named, hierarchical locks whose rules run in a WebAssembly component",
    after_help = "\
DURATION: 30s, 5m, 1500ms, 2h, 1d, 1.5s; a bare number is seconds.
Exit codes: 0 done; 1 refused by the lock rules (held, not the owner, not locked, \
lease expired, busy, --wait ran out); 2 bad input or a broken environment. \
`run` and `lock RESOURCE -- COMMAND` exit with COMMAND's code (126: cannot run it, \
127: not found, 128+N: killed by signal N); `lock RESOURCE -- COMMAND` exits 3 \
when the lock was lost while COMMAND ran."
)]
struct Cli {
    /// Lock directory [default: $XDG_STATE_HOME/hasp, else ~/.local/state/hasp]
    #[arg(long, global = true, env = "HASP_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep named locks on etcd instead of a lock directory:
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (PREFIX default `hasp`).
    /// For lock, unlock, renew, status and serve; `run` and `who` use
    /// lock files, in --dir
    #[arg(long, global = true, env = "HASP_STORE", value_name = "URL")]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take a lock; exit 1 with the holder's name if it is held. With
    /// `-- COMMAND`, hold it while COMMAND runs
    ///
    /// Without --client the lock is anonymous and only its token opens it:
    /// `lock` prints that token on stdout, one line. With --client it prints
    /// nothing (-v and --json print the grant either way).
    ///
    /// With `-- COMMAND [ARGS...]` (as `etcdctl lock` and `consul lock`):
    /// takes the lock with a lease (--ttl, default 30s), runs COMMAND with
    /// HASP_LOCK_RESOURCE, HASP_LOCK_FENCING and HASP_LOCK_TOKEN in its
    /// environment, renews the lease every third of its TTL, and releases
    /// the lock when COMMAND exits. Exits with COMMAND's code (126: cannot
    /// run it, 127: not found, 128+N: killed by signal N); SIGINT, SIGTERM,
    /// SIGHUP and SIGQUIT are forwarded to COMMAND. If the lock is lost
    /// (its lease ran out, or `unlock --force` broke it), hasp says so on
    /// stderr, sends COMMAND SIGTERM, SIGKILL --kill-after later, and exits
    /// 3. If hasp itself is killed, the lock ends with its lease.
    Lock {
        /// Resource name, e.g. `deploy` or `/my/resource`
        resource: String,
        #[command(flatten)]
        options: LockArgs,
        /// Give the lock a lease: it ends by itself DURATION after it was
        /// granted or last renewed (`30s`, `5m`, `1500ms`; a bare number is
        /// seconds; 1 ms to 30 days) [default: no lease; 30s with COMMAND]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
        ttl: Option<Duration>,
        /// If it is held, wait until it is released or its lease ends, like
        /// `flock -w`: for ever, or at most DURATION (a bare number is
        /// seconds), then exit 1 naming the holder [default: fail at once]
        #[arg(
            long,
            value_name = "DURATION",
            num_args = 0..=1,
            value_parser = parse_duration,
            allow_negative_numbers = true
        )]
        wait: Option<Option<Duration>>,
        /// With COMMAND: once the lock is lost and COMMAND got SIGTERM, send
        /// it SIGKILL if it still runs DURATION later
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "10s",
            value_parser = parse_duration,
            allow_hyphen_values = true,
            requires = "command"
        )]
        kill_after: Duration,
        /// Print the grant (token, fencing token) as JSON
        #[arg(long, conflicts_with = "command")]
        json: bool,
        /// Print the unlock token and the fencing token
        #[arg(short, long, conflicts_with = "command")]
        verbose: bool,
        /// A command to run while holding the lock (after `--`)
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Release a lock, proving ownership by client id or by token; or break
    /// it with --force
    Unlock {
        /// Resource name
        resource: String,
        /// The client id the lock was taken with
        #[arg(
            long,
            required_unless_present_any = ["token", "force"],
            conflicts_with_all = ["token", "force"]
        )]
        client: Option<String>,
        /// The unlock token (printed by an anonymous `hasp lock`, or with
        /// -v or --json)
        #[arg(long, conflicts_with = "force")]
        token: Option<String>,
        /// Break the lock whoever holds it (the operator's tool); prints
        /// whose lock it broke. The fencing sequence goes on from there
        #[arg(long)]
        force: bool,
    },
    /// Extend the lease of a lock you hold; exit 1 if it ran out or is not
    /// yours
    ///
    /// The lease then ends --ttl from now; the fencing token and the unlock
    /// token stay the same. Prints nothing. Once the lease has run out
    /// (whether or not somebody took the lock since), renew and unlock fail
    /// with `Lease expired: ...`: the lock is no longer yours.
    Renew {
        /// Resource name
        resource: String,
        /// The client id the lock was taken with
        #[arg(long, required_unless_present = "token", conflicts_with = "token")]
        client: Option<String>,
        /// The unlock token (printed by an anonymous `hasp lock`, or with
        /// -v or --json)
        #[arg(long)]
        token: Option<String>,
        /// The lease's new length, counted from now (a lock without a lease
        /// gets one) [default: the lease's own length]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
        ttl: Option<Duration>,
    },
    /// Run COMMAND while holding an OS lock on a lock file; exit with its code
    Run(RunArgs),
    /// Show who holds a lock file: pid, host, since, command — or "not held"
    Who {
        /// Lock file, relative to the lock directory (or absolute inside it)
        path: String,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Serve the lock directory over HTTP: Locker's API, gocept.lockd's
    /// XML-RPC and a JSON API (/v1), until SIGINT or SIGTERM
    Serve(ServeArgs),
    /// The guest component itself, for the stock `wasmtime run` and plugins
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Run or compose a plugin: a component that imports hasp:lock/registry
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Show held locks: all of them, or the one on RESOURCE
    Status {
        /// Resource name; without it, every held lock
        resource: Option<String>,
        /// Machine-readable output (`null` for a free resource)
        #[arg(long)]
        json: bool,
        /// First say where the locks are kept: `store: DIR` or
        /// `store: etcd://...`
        #[arg(short, long, conflicts_with = "json")]
        verbose: bool,
    },
    /// Print a completion script for SHELL: `source <(hasp completions bash)`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print hasp's manual page (roff): `hasp man | man -l -`
    Man,
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Print the path of the guest component (.wasm), writing it first if
    /// needed: `wasmtime run --dir ./locks::/locks "$(hasp component path)" lock X`
    Path,
    /// Print the `hasp:lock` WIT package, for a plugin's wit/deps/
    Wit,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run PLUGIN (a command component) with the hasp guest plugged into its
    /// hasp:lock imports and the lock directory as /locks; exit with its code
    Run {
        /// The plugin's .wasm file
        plugin: PathBuf,
        /// Stop the plugin after SECONDS of wall-clock time
        #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_timeout)]
        timeout: Duration,
        /// Most memory the plugin may hold, all its linear memories together
        #[arg(long, default_value = "256", value_name = "MIB")]
        max_memory: usize,
        /// Arguments passed to the plugin
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Write PLUGIN with the hasp guest plugged in: one component that runs
    /// under the stock `wasmtime run --dir ./locks::/locks`
    Compose {
        /// The plugin's .wasm file
        plugin: PathBuf,
        /// Where to write the composed component
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Wait at most SECONDS for the lock (0: fail at once) [default: wait for ever]
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// Take the lock shared with other --shared holders
    #[arg(long)]
    shared: bool,
    /// Lock file, relative to the lock directory (or an absolute path inside it)
    path: String,
    /// The command to run while holding the lock
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "HOST:PORT")]
    addr: String,
    /// Host part of the address (Locker's --ip)
    #[arg(long, value_name = "IP")]
    ip: Option<String>,
    /// Port part of the address (Locker's --port)
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Require `Authorization: Bearer TOKEN`, TOKEN being this file's content
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow a non-loopback address without a token (trusted networks only)
    #[arg(long)]
    insecure: bool,
    /// Make every change survive power loss before it is acknowledged
    #[arg(long)]
    fsync: bool,
    /// Guest instances serving requests in parallel, 1 to 1024 [default: 8 per CPU]
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,
    /// A request must arrive whole within SECONDS (0.001 at least) of its first byte
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_request_timeout)]
    request_timeout: Duration,
    /// What to log: error, warn, info (start, stop, failures), debug (and
    /// one line per request), or filters as RUST_LOG takes them
    /// (`hasp::access=info,warn`) [default: RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL|FILTER", env = "HASP_LOG", value_parser = crate::logs::check)]
    log: Option<String>,
    /// How log lines are written on stderr
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: crate::logs::Format,
    /// Give a lease of DURATION to grants made through doors where the
    /// client cannot ask for one (gocept.lockd's XML-RPC, Locker's canhaz
    /// without ttl=) [default: none]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    default_ttl: Option<Duration>,
    /// Connections open at once; past it, the longest-idle one is closed [default: 1024, fewer under a low `ulimit -n`]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    max_connections: Option<usize>,
}

#[derive(Args)]
struct LockArgs {
    /// Client id recorded as the owner (omit for an anonymous lock)
    #[arg(long)]
    client: Option<String>,
    /// Do not conflict with locks on parent resources
    #[arg(long)]
    no_lock_parents: bool,
    /// Do not conflict with locks on child resources
    #[arg(long)]
    no_lock_children: bool,
}

/// Runs the command line and returns the exit code.
pub fn run() -> i32 {
    use clap::error::ErrorKind;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and the version are what was asked for.
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            err.exit()
        }
        // A bad value (a duration, a timeout): one line, as every error.
        Err(err) if err.kind() == ErrorKind::ValueValidation => {
            let text = err.to_string();
            eprintln!("{}", text.lines().next().unwrap_or_default());
            return 2;
        }
        // Any other misuse: clap's first paragraph (the error, and what
        // it names on the lines after) as one line, and where to read more.
        Err(err) => {
            let text = err.to_string();
            let first: Vec<&str> = text
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see hasp --help)", first.join(" "));
            return 2;
        }
    };
    match execute(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err}");
            match err.downcast_ref::<Error>() {
                Some(e) if e.is_refusal() => 1,
                _ => 2,
            }
        }
    }
}

/// Runs the command line and returns the exit code.
fn execute(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Plugin(PluginCommand::Compose { plugin, output }) = &cli.command {
        let bytes = read_plugin(plugin)?;
        let composed = hasp::plugin::compose(&plugin.display().to_string(), &bytes)?;
        std::fs::write(output, composed)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
        return Ok(0);
    }
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "hasp", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            return Ok(0);
        }
        _ => {}
    }
    if let Command::Component(what) = &cli.command {
        match what {
            ComponentCommand::Path => println!("{}", hasp::component_file()?.display()),
            ComponentCommand::Wit => print!("{}", hasp::WIT),
        }
        return Ok(0);
    }
    // Lock files (`run`, `who`) and plugins live in a directory; named
    // locks in the store, which is the directory unless --store names one.
    let uses_files = matches!(
        cli.command,
        Command::Plugin(_) | Command::Run(_) | Command::Who { .. }
    );
    let dir = match cli.dir {
        Some(dir) => dir,
        None if uses_files || cli.store.is_none() => default_dir()?,
        None => PathBuf::new(),
    };
    let store = match &cli.store {
        Some(url) if !uses_files => Store::Etcd(hasp::EtcdUrl::parse(url)?),
        _ => Store::Dir(dir.clone()),
    };
    match cli.command {
        Command::Plugin(PluginCommand::Run {
            plugin,
            timeout,
            max_memory,
            args,
        }) => {
            let bytes = read_plugin(&plugin)?;
            let runtime = hasp::Runtime::new(hasp::Limits {
                call_timeout: timeout,
                memory: max_memory.saturating_mul(1 << 20),
            })?;
            let name = plugin.display().to_string();
            // The runtime stops running code at the limit; a plugin waiting
            // inside a host call (a sleep, its input) is stopped here, a
            // moment later.
            let message = format!(
                "plugin {name}: it ran past its time limit ({} s) and was stopped",
                timeout.as_secs_f64()
            );
            std::thread::spawn(move || {
                std::thread::sleep(timeout + Duration::from_millis(500));
                eprintln!("{message}");
                std::process::exit(2);
            });
            Ok(hasp::plugin::run(&runtime, &name, &bytes, &dir, &args)?)
        }
        Command::Run(run) => run_locked(&dir, run),
        Command::Serve(args) => serve(store, args).map(|()| 0),
        Command::Lock {
            resource,
            options,
            ttl,
            wait,
            kill_after,
            command,
            ..
        } if !command.is_empty() => {
            let registry = Registry::open_store(&store)?;
            let hold = crate::hold::Hold {
                resource,
                options: lock_options(options, ttl),
                patience: patience(wait),
                kill_after,
                command,
            };
            Ok(crate::hold::hold(registry, hold)?)
        }
        Command::Who { path, json } => {
            let holder = FileLock::holder_of(&dir, &inside(&dir, &path))?;
            print_who(&mut std::io::stdout().lock(), &holder, json)?;
            Ok(0)
        }
        command => registry_command(&store, command).map(|()| 0),
    }
}

/// The largest plugin read: far beyond any component hasp composes with.
const MAX_PLUGIN: u64 = 64 << 20;

/// A plugin's bytes: a regular file of at most [`MAX_PLUGIN`] bytes (a FIFO
/// would block for ever, a device never end).
fn read_plugin(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let fail = |why: &dyn std::fmt::Display| anyhow::anyhow!("plugin {}: {why}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(&format_args!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail(&"not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(&format_args!("cannot read it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PLUGIN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&format_args!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PLUGIN {
        return Err(fail(&format_args!("larger than {} MiB", MAX_PLUGIN >> 20)));
    }
    Ok(bytes)
}

/// `hasp run`: hold the lock file while the command runs; its exit code.
fn run_locked(dir: &Path, run: RunArgs) -> anyhow::Result<i32> {
    let lock = FileLock::open(dir, &inside(dir, &run.path))?;
    let wait = match run.timeout {
        None => Wait::Forever,
        Some(d) if d.is_zero() => Wait::No,
        Some(d) => Wait::For(d),
    };
    let _guard = lock
        .acquire(run.shared, wait, run.command.join(" "))
        .map_err(Error::from)?;
    Ok(crate::child::run(&run.command))
}

/// `hasp serve`: checks the address and the token, then serves.
fn serve(store: Store, args: ServeArgs) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let filter = match (args.log, std::env::var("RUST_LOG")) {
        (Some(filter), _) => filter,
        (None, Ok(rust_log)) if !rust_log.trim().is_empty() => {
            crate::logs::check(&rust_log).map_err(|e| anyhow::anyhow!("RUST_LOG: {e}"))?
        }
        (None, _) => "info".to_string(),
    };
    crate::logs::install(&filter, args.log_format);
    let (mut host, mut port) = match args.addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>().map_err(|_| Error::InvalidInput {
                message: format!("--addr {:?}: the port is not a number", args.addr),
            })?,
        ),
        None => anyhow::bail!("--addr {:?} must be HOST:PORT", args.addr),
    };
    if let Some(ip) = args.ip {
        host = ip;
    }
    if let Some(p) = args.port {
        port = p;
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))?;
    let token = match &args.token_file {
        Some(file) => Some(read_token(file)?),
        None => None,
    };
    // A socket systemd passed (socket activation) takes the place of --addr.
    let passed = crate::systemd::passed_listener()?;
    let addr = match &passed {
        Some(listener) => listener.local_addr()?,
        None => addr,
    };
    if !addr.ip().is_loopback() && token.is_none() && !args.insecure {
        anyhow::bail!(
            "refusing to serve {addr} without a token: anyone who can reach it could take and \
             break locks. Pass --token-file FILE (clients send `Authorization: Bearer TOKEN`), \
             or --insecure on a trusted network"
        );
    }
    let workers = args
        .workers
        .unwrap_or_else(|| 8 * std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = hasp::serve::ServeConfig {
        store,
        token,
        fsync: args.fsync,
        workers,
        limits: hasp::serve::Limits {
            request_timeout: args.request_timeout,
            ..hasp::serve::Limits::default()
        },
        default_ttl: args.default_ttl,
        max_connections: args.max_connections,
    };
    // The server's own runtime: it accepts, and runs the calls that may
    // take long (a list). Connections, and the guest calls they make, run
    // on one network thread per CPU the server starts (serve/threads.rs).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reactor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("hasp-main")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the network runtime: {e}"))?;
    reactor.block_on(async move {
        // Handlers first: a signal that follows the startup line must stop
        // the server cleanly, not kill it.
        let stop = stop_signal()?;
        let listener = match passed {
            Some(listener) => tokio::net::TcpListener::from_std(listener)?,
            None => tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen { addr, source })?,
        };
        let server = hasp::serve::Server::start(listener, config).await?;
        // systemd (Type=notify): ready once the guests run; stopping at
        // the signal, before the requests in flight are answered.
        crate::systemd::notify("READY=1");
        server
            .run(async {
                stop.await;
                crate::systemd::notify("STOPPING=1");
            })
            .await;
        Ok(())
    })
}

/// Resolves at the first SIGINT or SIGTERM (installed at once).
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind: SignalKind| {
        signal(kind).map_err(|e| anyhow::anyhow!("cannot handle SIGINT and SIGTERM: {e}"))
    };
    let (mut int, mut term) = (
        handler(SignalKind::interrupt())?,
        handler(SignalKind::terminate())?,
    );
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// The registry commands: lock, unlock, status.
fn registry_command(store: &Store, command: Command) -> anyhow::Result<()> {
    let mut registry = Registry::open_store(store)?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Run(_)
        | Command::Who { .. }
        | Command::Serve(_)
        | Command::Component(_)
        | Command::Plugin(_)
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("not registry commands")
        }
        Command::Lock {
            resource,
            options,
            ttl,
            wait,
            json,
            verbose,
            ..
        } => {
            let options = lock_options(options, ttl);
            let anonymous = options.client.is_none();
            // Without a client id only the token opens the lock; without a
            // lease nothing else ends it. Standard output discarded (or
            // closed, which Rust turns into /dev/null) would lose it: ask
            // first.
            if anonymous && options.ttl.is_none() && stdout_discarded() {
                anyhow::bail!(
                    "standard output is closed or /dev/null: the unlock token of an anonymous \
                     lock without a lease would be lost; nothing was locked (give --client, \
                     --ttl, or somewhere to print the token)"
                );
            }
            let (grant, _) = crate::hold::lock(&mut registry, &resource, &options, patience(wait))?;
            let printed = if json {
                let line = json::object(&shown(&grant.holder), Some(&grant.token));
                writeln!(out, "{line}")
            } else if verbose {
                print_grant(&mut out, &grant)
            } else if anonymous {
                writeln!(out, "{}", grant.token)
            } else {
                Ok(())
            };
            if let Err(err) = printed.and_then(|()| out.flush()) {
                if anonymous {
                    // Nobody got the token: the grant goes back.
                    let released = registry.unlock(&resource, &UnlockKey::Token(grant.token));
                    let what = match released {
                        Ok(_) => "released the lock again".to_string(),
                        Err(e) => format!("could not release it ({e})"),
                    };
                    anyhow::bail!("cannot print the unlock token ({err}); {what}");
                }
                return Err(err.into());
            }
        }
        Command::Unlock {
            resource,
            client,
            token,
            force,
        } => {
            if force {
                let broken = registry.force_unlock(&resource)?;
                let line = show::broke(&broken.resource, broken.client.as_deref(), broken.fencing);
                writeln!(out, "{line}")?;
            } else {
                registry.unlock(&resource, &key(client, token))?;
            }
        }
        Command::Renew {
            resource,
            client,
            token,
            ttl,
        } => {
            registry.renew(&resource, &key(client, token), ttl)?;
        }
        Command::Status {
            resource,
            json,
            verbose,
        } => {
            if verbose {
                writeln!(out, "store: {}", registry.store())?;
            }
            match resource {
                Some(resource) => {
                    let held = registry.status(&resource)?;
                    match (held, json) {
                        (Some(h), true) => writeln!(out, "{}", json::object(&shown(&h), None))?,
                        (None, true) => writeln!(out, "null")?,
                        (Some(h), false) => print_table(&mut out, &[h])?,
                        (None, false) => writeln!(out, "{}", hasp_text::NOT_LOCKED)?,
                    }
                }
                None => {
                    let all = registry.list("")?;
                    if json {
                        writeln!(out, "{}", json::array(all.iter().map(shown)))?;
                    } else {
                        print_table(&mut out, &all)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The lock options the command line asked for.
fn lock_options(args: LockArgs, ttl: Option<Duration>) -> LockOptions {
    let default = LockOptions::default();
    LockOptions {
        client: args.client,
        lock_parents: default.lock_parents && !args.no_lock_parents,
        lock_children: default.lock_children && !args.no_lock_children,
        ttl,
        ..default
    }
}

/// `--wait` absent, given alone, or given a duration.
fn patience(wait: Option<Option<Duration>>) -> crate::hold::Patience {
    use crate::hold::Patience;
    match wait {
        None => Patience::No,
        Some(None) => Patience::Forever,
        Some(Some(limit)) => Patience::For(limit),
    }
}

/// What proves ownership: `--client` or `--token` (clap requires one).
fn key(client: Option<String>, token: Option<String>) -> UnlockKey {
    match (client, token) {
        (Some(client), _) => UnlockKey::Client(client),
        (None, Some(token)) => UnlockKey::Token(token),
        (None, None) => unreachable!("clap requires one of them"),
    }
}

/// A lock file path as the guest sees it: an absolute path inside `dir`
/// becomes relative to it; anything else is passed on for the guest to judge.
fn inside(dir: &Path, path: &str) -> String {
    let absolute = Path::new(path);
    if absolute.is_absolute() {
        // The directory as given (it may be a symlink), then as it resolves.
        let resolved = dir.canonicalize().ok();
        for dir in std::iter::once(dir).chain(resolved.as_deref()) {
            if let Ok(rest) = absolute.strip_prefix(dir) {
                return rest.to_string_lossy().into_owned();
            }
        }
    }
    path.to_string()
}

/// The most bytes a `--token-file` may hold.
const TOKEN_FILE_MAX: usize = 4096;

/// The token in `file`: a regular file of at most 4 KiB, whose content
/// (without the whitespace around it) is one word of visible characters.
fn read_token(file: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = file.display();
    // Non-blocking, so that opening a FIFO does not wait for a writer.
    let mut opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| anyhow::anyhow!("cannot read --token-file {shown}: {e}"))?;
    let meta = opened
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read --token-file {shown}: {e}"))?;
    if !meta.file_type().is_file() {
        anyhow::bail!("--token-file {shown} is not a regular file");
    }
    let mut bytes = Vec::with_capacity(256);
    (&mut opened)
        .take(TOKEN_FILE_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read --token-file {shown}: {e}"))?;
    if bytes.len() > TOKEN_FILE_MAX {
        anyhow::bail!("--token-file {shown} is larger than 4 KiB: it should hold only the token");
    }
    let Ok(text) = String::from_utf8(bytes) else {
        anyhow::bail!("--token-file {shown} is not UTF-8 text");
    };
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("--token-file {shown} is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "the token in --token-file {shown} has whitespace or control characters inside: \
             it must be one word, as clients send it in `Authorization: Bearer TOKEN`"
        );
    }
    Ok(token.to_string())
}

/// `--workers`: 1 to 1024.
fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a number of workers from 1 to 1024"
        )),
    }
}

/// `--max-connections`: 1 or more.
fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{text}' is not a number of connections (1 or more)"
        )),
    }
}

/// `--request-timeout`: seconds, at least a millisecond (less would time
/// out every request that does not arrive in one packet).
fn parse_request_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_timeout(text)?;
    if timeout < Duration::from_millis(1) {
        return Err(format!(
            "'{text}' is less than a millisecond (0.001 at least)"
        ));
    }
    Ok(timeout)
}

/// Seconds as a number, 0 or more (fractions allowed).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    /// The longest timeout taken: a year (longer is "for ever", which the
    /// options that wait say by their absence).
    const MOST: f64 = 365.0 * 24.0 * 3600.0;
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=MOST).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        Ok(secs) if secs.is_finite() && secs > MOST => Err(format!(
            "'{text}' is more than a year of seconds ({MOST:.0} at most)"
        )),
        _ => Err(format!("'{text}' is not a number of seconds (0 or more)")),
    }
}

/// A duration as people type it (`30s`, `5m`, `1500ms`, `2h`; a bare
/// number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse_ms(text).map(Duration::from_millis)
}

fn print_who(out: &mut impl Write, holder: &FileHolder, json: bool) -> anyhow::Result<()> {
    match (holder, json) {
        (FileHolder::Free, false) => writeln!(out, "not held")?,
        (FileHolder::Unrecorded, false) => {
            writeln!(out, "held (shared, or by a holder that recorded nothing)")?
        }
        (FileHolder::Owner(o), false) => writeln!(
            out,
            "pid {} on {} since {}: {}",
            o.pid,
            o.host,
            utc(o.since_ms),
            o.command
        )?,
        (FileHolder::Free, true) => writeln!(out, "{}", serde_json::json!({ "held": false }))?,
        (FileHolder::Unrecorded, true) => writeln!(
            out,
            "{}",
            serde_json::json!({ "held": true, "owner": null })
        )?,
        (FileHolder::Owner(o), true) => {
            writeln!(out, "{}", serde_json::json!({ "held": true, "owner": o }))?
        }
    }
    Ok(())
}

/// `$XDG_STATE_HOME/hasp`, else `$HOME/.local/state/hasp`; created if missing.
fn default_dir() -> anyhow::Result<PathBuf> {
    let env = |key| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("XDG_STATE_HOME")
        .map(|d| d.join("hasp"))
        .or_else(|| env("HOME").map(|d| d.join(".local").join("state").join("hasp")))
        .ok_or_else(|| anyhow::anyhow!("no lock directory: pass --dir or set HASP_DIR or HOME"))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the lock directory {}: {e}", dir.display()))?;
    Ok(dir)
}

fn print_grant(out: &mut impl Write, grant: &Grant) -> std::io::Result<()> {
    writeln!(out, "token: {}", grant.token)?;
    writeln!(out, "fencing: {}", grant.holder.fencing)
}

fn print_table(out: &mut impl Write, holders: &[Holder]) -> std::io::Result<()> {
    let rows: Vec<hasp_text::Lock<'_>> = holders.iter().map(shown).collect();
    out.write_all(show::table(&rows).as_bytes())
}

/// A holder as the guest's texts show it.
fn shown(h: &Holder) -> hasp_text::Lock<'_> {
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

/// Whether standard output goes nowhere: closed, or `/dev/null` (where the
/// Rust runtime points a descriptor that was closed at start).
fn stdout_discarded() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: fstat writes only into the struct it is given.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(libc::STDOUT_FILENO, &mut stat) } == -1 {
        return true;
    }
    null.file_type().is_char_device()
        && stat.st_mode & libc::S_IFMT == libc::S_IFCHR
        && stat.st_rdev == null.rdev()
}

#[cfg(test)]
mod tests {
    use super::{duration, parse_timeout};
    use proptest::prelude::*;

    proptest! {
        /// Whatever is typed, a duration is parsed or refused, never a panic.
        #[test]
        fn durations_never_panic(text in ".{0,40}") {
            let _ = duration::parse_ms(&text);
            let _ = parse_timeout(&text);
        }

        /// Every whole number with every unit reads back as that many ms.
        #[test]
        fn durations_read_back(n in 0u64..1_000_000_000) {
            prop_assert_eq!(duration::parse_ms(&format!("{n}ms")), Ok(n));
            prop_assert_eq!(duration::parse_ms(&format!("{n}s")), Ok(n * 1000));
            prop_assert_eq!(duration::parse_ms(&n.to_string()), Ok(n * 1000));
            prop_assert_eq!(duration::parse_ms(&format!("{n}m")), Ok(n * 60_000));
        }

        /// A positive fraction never rounds down to nothing.
        #[test]
        fn a_positive_duration_is_never_zero(digits in "0\\.0{0,12}[1-9]") {
            prop_assert!(duration::parse_ms(&digits).is_ok_and(|ms| ms >= 1));
        }
    }
}
