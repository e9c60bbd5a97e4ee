//! `control-plane`: the SIP server (registrar with digest auth, B2BUA) that anchors every call's
//! media in a media plane through the `media.v1` gRPC API.
//!
//! ```text
//! control-plane --config control-plane.toml            # run the server
//! control-plane subscriber add --config F --user alice --domain sip.test --password secret
//! control-plane subscriber import --config F --domain sip.test users.csv   # user;password lines
//! control-plane subscriber list --config F
//! control-plane subscriber set-auth --config F --user alice --domain sip.test --algorithm SHA-256   # or default
//! control-plane subscriber remove --config F --user alice --domain sip.test
//! control-plane settings show --config F alice@sip.test        # call settings as JSON
//! control-plane settings set --config F alice@sip.test forward.busy=carol forward.no_answer_s=20
//! control-plane settings clear --config F alice@sip.test       # every setting off
//! control-plane settings set --config F alice@sip.test account=acme   # who pays its trunk calls
//! control-plane account add --config F acme --kind prepaid --balance 10.00 max_concurrent=2
//! control-plane account set --config F acme blocked=4490,4487 max_call_cost=5.00
//! control-plane account credit --config F acme 5.00            # top up (debit: take money)
//! control-plane account show --config F acme                   # balance, held, calls in progress
//! control-plane account list --config F
//! control-plane cdr export --config F --since 0                 # CSV
//! ```
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 bad configuration or usage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use control_plane::config::Config;
use control_plane::now::Now;
use control_plane::server::ControlPlane;
use control_plane::store::{PgStore, SqliteStore, Store, Subscriber};
use sip_core::digest::Algorithm;

/// mimalloc: SIP messages are parsed into many small strings, and glibc's allocator spent about a
/// quarter of the CPU per call freeing and consolidating them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "SIP registrar and B2BUA anchoring media in the media plane")]
struct Cli {
    /// TOML configuration (see the README for every key).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage subscribers in the configured store.
    Subscriber {
        #[command(subcommand)]
        action: SubscriberAction,
    },
    /// A subscriber's call settings: forwarding, find-me, screening, E.164, PSTN fallback.
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
    /// Billing accounts: prepaid balances, postpaid credit limits, fraud guards.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Call detail records in the configured store.
    Cdr {
        #[command(subcommand)]
        action: CdrAction,
    },
}

#[derive(Debug, Subcommand)]
enum CdrAction {
    /// Writes the records of calls that ended at or after --since (UNIX ms) as CSV to stdout.
    Export {
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AccountAction {
    /// Add an account, with settings as `key=value` pairs (max_concurrent, max_per_minute,
    /// max_call_cost, blocked, credit_limit, enabled).
    Add {
        id: String,
        #[arg(long, default_value = "prepaid")]
        kind: String,
        /// Starting balance, e.g. 10.00.
        #[arg(long, default_value = "0")]
        balance: String,
        /// Default: [billing] currency.
        #[arg(long)]
        currency: Option<String>,
        pairs: Vec<String>,
    },
    /// Change settings (`key=value` pairs); not the balance.
    Set {
        id: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Add money to the balance.
    Credit { id: String, amount: String },
    /// Take money from the balance.
    Debit { id: String, amount: String },
    /// Print an account: balance, credit held by calls in progress, guards.
    Show { id: String },
    /// Every account.
    List,
}

#[derive(Debug, Subcommand)]
enum SettingsAction {
    /// Print the settings as JSON.
    Show {
        /// user@domain
        subscriber: String,
    },
    /// Change settings: `key=value` pairs (an empty value clears one); all or nothing.
    Set {
        /// user@domain
        subscriber: String,
        /// e.g. forward.busy=carol, forward.no_answer_s=20, screen.reject=+1900*,anonymous
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Turn every setting off.
    Clear {
        /// user@domain
        subscriber: String,
    },
}

#[derive(Debug, Subcommand)]
enum SubscriberAction {
    /// Add one subscriber.
    Add {
        #[arg(long)]
        user: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        password: String,
        /// The only digest algorithm this subscriber is challenged with and may use (MD5,
        /// SHA-256, SHA-512-256, optionally -sess); default: the domain's or server's setting.
        #[arg(long)]
        auth_algorithm: Option<String>,
    },
    /// Set a subscriber's digest algorithm (`default` clears it).
    SetAuth {
        #[arg(long)]
        user: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        algorithm: String,
    },
    /// Add subscribers from a file of `user;password` lines (sipp's CSV format; a first line
    /// SEQUENTIAL/RANDOM and lines starting with # are skipped).
    Import {
        #[arg(long)]
        domain: String,
        file: PathBuf,
    },
    /// List subscribers.
    List,
    /// Remove a subscriber and its registrations.
    Remove {
        #[arg(long)]
        user: String,
        #[arg(long)]
        domain: String,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let result = match path {
        Some(p) => Config::load(p),
        None => Config::parse("[sip]\ndomains = [\"localhost\"]\n"),
    };
    result.map_err(|e| {
        eprintln!("control-plane: configuration: {e}");
        ExitCode::from(2)
    })
}

/// A digest algorithm token from the command line; `default` is none.
fn parse_algorithm(text: &str) -> Result<Option<Algorithm>, ExitCode> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    Algorithm::from_token(text).map(Some).ok_or_else(|| {
        eprintln!("control-plane: algorithm {text:?} is not MD5, SHA-256, SHA-512-256 (optionally -sess) or default");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "control_plane=info".into()))
        .with_writer(std::io::stderr)
        .init();
    // No transparent huge pages for this process: mimalloc asks for them on its arena, so the
    // resident size would move in 2 MB steps that freed memory seldom gives back, and creep up
    // for minutes under a steady load. A SIP server gains little from huge pages; a carrier
    // wants its memory as flat as its load (the soak checks it: docs/benchmarks.md).
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(%error, "cannot turn transparent huge pages off");
    }
    let cli = Cli::parse();
    let config = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opened: Result<Box<dyn Store>, _> = match &config.store_postgres {
        Some(params) => PgStore::open(params).map(|s| Box::new(s) as Box<dyn Store>),
        None => SqliteStore::open(&config.store_path).map(|s| Box::new(s) as Box<dyn Store>),
    };
    let mut store = match opened {
        Ok(s) => s,
        Err(e) => {
            let which = if config.store_postgres.is_some() { "PostgreSQL".to_owned() } else { config.store_path.display().to_string() };
            eprintln!("control-plane: store {which}: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Some(Command::Subscriber { action }) => subscriber(action, &config, store.as_mut()),
        Some(Command::Settings { action }) => settings(action, store.as_mut()),
        Some(Command::Account { action }) => account(action, &config, store.as_mut()),
        Some(Command::Cdr { action: CdrAction::Export { since } }) => match store.cdrs(since) {
            Ok(cdrs) => {
                print!("{}", control_plane::billing::cdr::to_csv(&cdrs));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("control-plane: cdr export: {e}");
                ExitCode::from(1)
            }
        },
        None => serve(config, store),
    }
}

fn subscriber(action: SubscriberAction, config: &Config, store: &mut dyn Store) -> ExitCode {
    let result = match action {
        SubscriberAction::Add { user, domain, password, auth_algorithm } => {
            let mut subscriber = Subscriber::with_password(&user, &domain, &config.realm, &password);
            match auth_algorithm.as_deref().map(parse_algorithm).transpose() {
                Ok(a) => subscriber.auth_algorithm = a.flatten(),
                Err(code) => return code,
            }
            store.add_subscriber(&subscriber).map(|()| {
                println!("added {user}@{domain}");
            })
        }
        SubscriberAction::Import { domain, file } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("control-plane: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let mut added = 0usize;
            let mut result = Ok(());
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') || matches!(line, "SEQUENTIAL" | "RANDOM" | "USER") {
                    continue;
                }
                let mut fields = line.split(';');
                let (Some(user), Some(password)) = (fields.next(), fields.next()) else {
                    eprintln!("control-plane: {}: line {line:?} is not user;password", file.display());
                    return ExitCode::from(2);
                };
                match store.add_subscriber(&Subscriber::with_password(user, &domain, &config.realm, password)) {
                    Ok(()) => added += 1,
                    Err(control_plane::store::StoreError::AlreadyExists(_)) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result.map(|()| println!("imported {added} subscribers into {domain}"))
        }
        SubscriberAction::SetAuth { user, domain, algorithm } => {
            let algorithm = match parse_algorithm(&algorithm) {
                Ok(a) => a,
                Err(code) => return code,
            };
            store.set_auth_algorithm(&user, &domain, algorithm).and_then(|found| {
                if found {
                    println!("{user}@{domain}: {}", algorithm.map_or("default", |a| a.name()));
                    Ok(())
                } else {
                    Err(control_plane::store::StoreError::NotFound(format!("{user}@{domain}")))
                }
            })
        }
        SubscriberAction::List => store.subscribers().map(|all| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for s in all {
                // A closed pipe (`| head`) ends the listing quietly.
                let line = match s.auth_algorithm {
                    Some(a) => writeln!(out, "{}@{}\t{}", s.user, s.domain, a.name()),
                    None => writeln!(out, "{}@{}", s.user, s.domain),
                };
                if line.is_err() {
                    break;
                }
            }
        }),
        SubscriberAction::Remove { user, domain } => store.remove_subscriber(&user, &domain).map(|found| {
            if found {
                println!("removed {user}@{domain}");
            } else {
                println!("no subscriber {user}@{domain}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(control_plane::store::StoreError::AlreadyExists(who)) => {
            eprintln!("control-plane: subscriber {who} already exists");
            ExitCode::from(2)
        }
        Err(control_plane::store::StoreError::NotFound(who)) => {
            eprintln!("control-plane: no subscriber {who}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("control-plane: store: {e}");
            ExitCode::from(1)
        }
    }
}

fn settings(action: SettingsAction, store: &mut dyn Store) -> ExitCode {
    let who = match &action {
        SettingsAction::Show { subscriber } | SettingsAction::Set { subscriber, .. } | SettingsAction::Clear { subscriber } => {
            subscriber.clone()
        }
    };
    let Some((user, domain)) = who.split_once('@') else {
        eprintln!("control-plane: {who:?} is not user@domain");
        return ExitCode::from(2);
    };
    let current = match store.settings(user, domain) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("control-plane: no subscriber {who}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("control-plane: store: {e}");
            return ExitCode::from(1);
        }
    };
    let next = match action {
        SettingsAction::Show { .. } => {
            println!("{}", current.to_json());
            return ExitCode::SUCCESS;
        }
        SettingsAction::Clear { .. } => control_plane::settings::Settings::default(),
        SettingsAction::Set { pairs, .. } => {
            let mut next = current;
            for pair in &pairs {
                let Some((key, value)) = pair.split_once('=') else {
                    eprintln!("control-plane: {pair:?} is not key=value");
                    return ExitCode::from(2);
                };
                if let Err(e) = next.set(key.trim(), value) {
                    eprintln!("control-plane: {e}");
                    return ExitCode::from(2);
                }
            }
            next
        }
    };
    match store.set_settings(user, domain, &next) {
        Ok(_) => {
            println!("{}", next.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-plane: store: {e}");
            ExitCode::from(1)
        }
    }
}

fn account(action: AccountAction, config: &Config, store: &mut dyn Store) -> ExitCode {
    use control_plane::billing::accounts::{self, Command as A};
    let command = match action {
        AccountAction::Add { id, kind, balance, currency, pairs } => {
            A::Add { id, kind, balance, currency: currency.unwrap_or_else(|| config.currency.clone()), pairs }
        }
        AccountAction::Set { id, pairs } => A::Set { id, pairs },
        AccountAction::Credit { id, amount } => A::Credit { id, amount, debit: false },
        AccountAction::Debit { id, amount } => A::Credit { id, amount, debit: true },
        AccountAction::Show { id } => A::Show { id },
        AccountAction::List => A::List,
    };
    match accounts::run(store, command, Now::system().unix_ms()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(accounts::Error::Store(e)) => {
            eprintln!("control-plane: store: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("control-plane: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config, mut store: Box<dyn Store>) -> ExitCode {
    let config = Arc::new(config);
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        eprintln!("control-plane: no randomness from the operating system: {e}");
        return ExitCode::from(1);
    }
    let mut core = match ControlPlane::new(config.clone(), None, seed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    core.prefault();
    match store.bindings() {
        Ok(stored) => {
            let restored = core.registrar_mut().restore(stored, Now::system().unix());
            tracing::info!(restored, "registrations loaded");
        }
        Err(e) => tracing::warn!(error = %e, "cannot load registrations"),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-plane: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        control_plane::driver::run(config, core, store, shutdown).await
    });
    match result {
        Ok(stats) => {
            println!(
                "{{\"registrations\":{},\"calls_started\":{},\"calls_answered\":{},\"calls_completed\":{},\"calls_failed\":{},\"calls_cancelled\":{},\"media_allocations\":{},\"media_allocation_failures\":{},\"media_releases\":{},\"challenges\":{},\"auth_failures\":{},\"malformed\":{},\"rate_limited\":{},\"sources_banned\":{},\"scanners_dropped\":{},\"users_locked\":{},\"outbound_flows_closed\":{}}}",
                stats.registrations,
                stats.calls.calls_started,
                stats.calls.calls_answered,
                stats.calls.calls_completed,
                stats.calls.calls_failed,
                stats.calls.calls_cancelled,
                stats.calls.media_allocations,
                stats.calls.media_allocation_failures,
                stats.calls.media_releases,
                stats.challenges,
                stats.auth_failures,
                stats.malformed,
                stats.limits.rate_limited,
                stats.limits.sources_banned,
                stats.limits.scanners_dropped,
                stats.limits.users_locked,
                stats.outbound_flows_closed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-plane: {e}");
            ExitCode::from(1)
        }
    }
}
