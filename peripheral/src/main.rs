//! `vouch-peripheral`: generate and provision a device identity, and run the
//! reference peripheral against a gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};
use vouch_peripheral::backoff::BackoffConfig;
use vouch_peripheral::keystore::{FileKeyStore, KeyStore, KeyStoreError};
use vouch_peripheral::provision::{parse_attributes, parse_group, ImportRow};
use vouch_peripheral::reference::{decide, printable, telemetry, Command};
use vouch_peripheral::transport::Connector;
use vouch_peripheral::{Device, DeviceHandle, DriverConfig, Event, Events, TcpConnector};
use vouch_proto::anchor::AnchorBundle;
use vouch_proto::handshake::peripheral::TicketSlot;
use vouch_proto::keys::PeripheralId;
use vouch_proto::wire::Scope;

#[derive(Parser, Debug)]
#[command(
    name = "vouch-peripheral",
    version,
    about = "The Vouch reference peripheral: device identity, provisioning, and a device that authenticates to a gateway",
    long_about = "The Vouch reference peripheral.\n\n\
Set a device up once:\n  \
vouch-peripheral keygen --dir DIR > row.ndjson      (the key is made here and never leaves DIR)\n  \
vouch-backend --data-dir B import row.ndjson         (enroll the public key)\n  \
vouch-backend --data-dir B export-anchor --out anchor.json\n  \
vouch-peripheral provision --dir DIR --anchor anchor.json\n\
then run it:\n  \
vouch-peripheral run --dir DIR --connect tcp://GATEWAY:7800\n\n\
Logs go to standard error (VOUCH_LOG=debug for more); data goes to standard output."
)]
struct Cli {
    /// Log format (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VOUCH_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate this device's identity key in DIR and print its enrollment row.
    ///
    /// The Ed25519 key is generated here from the operating system's
    /// randomness and written to DIR/identity.pem (PKCS#8 PEM, mode 0600). It
    /// never leaves the device: standard output gets exactly one line, the
    /// device's row in the backend's NDJSON import format
    /// (`vouch-backend import FILE`). Refuses if DIR already holds a key.
    Keygen {
        /// The device's state directory (created with mode 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// A factory-assigned registry id (16 hex digits); default: derived from the key.
        #[arg(long)]
        id: Option<String>,
        /// The device's group in the registry.
        #[arg(long)]
        group: Option<String>,
        /// An attribute NAME=VALUE for the registry (repeatable).
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
    },
    /// Install the backend's trust-anchor bundle (from `vouch-backend export-anchor`).
    Provision {
        /// The device's state directory (holding its identity).
        #[arg(long)]
        dir: PathBuf,
        /// The anchor bundle (JSON).
        #[arg(long, value_name = "BUNDLE.json")]
        anchor: PathBuf,
    },
    /// Show the device's id, public key, anchors and ticket (never the private key).
    Show {
        /// The device's state directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the reference peripheral: authenticate to a gateway, send telemetry,
    /// obey commands within the granted scope.
    ///
    /// Standard output gets one line per message: `sent <json>` for each
    /// telemetry message, `recv <text>` for each message from the gateway,
    /// `anchors-updated serial=N primary=K` after an anchor rotation.
    /// Commands: `led=on|off` (needs scope app8), `interval=SECS` and `reboot`
    /// (need app9); others are refused with `refused: <cmd> outside scope`.
    /// Reconnects with backoff and resumes after gateway restarts; SIGINT or
    /// SIGTERM closes the session (reason shutdown) and exits 0.
    Run(RunArgs),
    #[command(flatten)]
    Docs(vouch_host::cli::Docs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The device's state directory.
    #[arg(long)]
    dir: PathBuf,
    /// The gateway: tcp://HOST:PORT, or `ble` / `ble:ADAPTER` to serve the
    /// GATT profile (needs a build with --features ble).
    #[arg(long, value_name = "URL")]
    connect: String,
    /// ATT MTU the fragments are sized for (23..=517). On BLE, notifications
    /// are sized for the smaller of this and the MTU BlueZ negotiated.
    #[arg(long, default_value_t = vouch_peripheral::transport::tcp::DEFAULT_ATT_MTU)]
    att_mtu: usize,
    /// Seconds between telemetry messages.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Exit 0 after sending this many telemetry messages.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to wait for the gateway's answer to a hello.
    #[arg(long, default_value_t = 30.0)]
    handshake_timeout: f64,
    /// Seconds: the first wait after a failure (it doubles, with jitter, per failure).
    #[arg(long, default_value_t = 0.5)]
    backoff_initial: f64,
    /// Seconds: the longest wait between attempts.
    #[arg(long, default_value_t = 60.0)]
    backoff_max: f64,
    /// DANGEROUS, tests only: emulates an attacker. After each connect the
    /// device sends nothing (no hello) and holds the link until the gateway
    /// closes it, then connects again: a rogue device occupying a link slot
    /// (SPEC.md §8.4). Never set on a real device.
    #[arg(long, hide = true)]
    danger_silent: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format) {
        vouch_host::report::fatal(&*e);
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Cmd::Keygen {
            dir,
            id,
            group,
            attrs,
        } => keygen(&dir, id.as_deref(), group.as_deref(), &attrs),
        Cmd::Provision { dir, anchor } => provision(&dir, &anchor),
        Cmd::Show { dir } => show(&dir),
        Cmd::Docs(docs) => docs
            .print(<Cli as clap::CommandFactory>::command())
            .context("writing to standard output"),
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            vouch_host::report::fatal(&*e);
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) -> Result<()> {
    let format = match format {
        LogFormat::Json => vouch_host::logging::Format::Json,
        LogFormat::Text => vouch_host::logging::Format::Text,
    };
    Ok(vouch_host::logging::init(format, "info")?)
}

fn keygen(dir: &Path, id: Option<&str>, group: Option<&str>, attrs: &[String]) -> Result<()> {
    // Check everything before the key exists: a refused row must not leave a
    // half-made device behind.
    let id = id
        .map(|s| {
            PeripheralId::from_hex(s)
                .with_context(|| format!("--id {s:?} is not a peripheral id (16 hex digits)"))
        })
        .transpose()?;
    let group = group.map(parse_group).transpose()?;
    let attributes = parse_attributes(attrs)?;
    let store = FileKeyStore::generate(dir, id)?;
    let row = ImportRow::new(
        store.peripheral_id(),
        &store.public_key(),
        group,
        attributes,
    );
    println!("{}", row.to_json_line());
    eprintln!(
        "generated a new device identity: id {} (key {}, mode 0600; it never leaves this device)",
        store.peripheral_id(),
        store.key_path().display()
    );
    eprintln!(
        "enroll it: save the line above to a file and run `vouch-backend --data-dir DATA import FILE`"
    );
    Ok(())
}

fn provision(dir: &Path, anchor: &Path) -> Result<()> {
    let text = read_small(anchor).with_context(|| format!("reading {}", anchor.display()))?;
    let bundle: AnchorBundle = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an anchor bundle (JSON from `vouch-backend export-anchor`)",
            anchor.display()
        )
    })?;
    let set = bundle
        .to_anchor_set()
        .with_context(|| format!("{} is not a valid anchor bundle", anchor.display()))?;
    let mut store = open_store(dir)?;
    store.save_anchors(&set)?;
    eprintln!(
        "installed 1 trust anchor (serial {}, key id {}) and the commitment to its successor into {}",
        set.serial(),
        set.primary().kid,
        store.anchors_path().display()
    );
    Ok(())
}

fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(1 << 20)
        .read_to_string(&mut s)?;
    Ok(s)
}

fn open_store(dir: &Path) -> Result<FileKeyStore> {
    FileKeyStore::open(dir)
        .with_context(|| format!("opening the device directory {}", dir.display()))
}

fn show(dir: &Path) -> Result<()> {
    let store = open_store(dir)?;
    println!("id          {}", store.peripheral_id());
    println!("public key  {}", store.public_key());
    println!("key file    {} (mode 0600)", store.key_path().display());
    match store.anchors() {
        Ok(set) => {
            let a = set.primary();
            println!(
                "anchors     1 held, serial {}, primary key id {}",
                set.serial(),
                a.kid.0
            );
            let sealing: String = a.sealing.0.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "  kid {:<3} signing {} sealing {}",
                a.kid.0, a.signing, sealing
            );
            let next: String = set.next().0.iter().map(|b| format!("{b:02x}")).collect();
            println!("  next key commitment {next}");
        }
        Err(KeyStoreError::NotProvisioned { .. }) => {
            println!("anchors     none (run `vouch-peripheral provision`)")
        }
        Err(e) => println!("anchors     unreadable: {e}"),
    }
    match store.load_tickets() {
        Ok(w) if w.is_empty() => {
            println!("ticket      none (the next connection runs a full handshake)")
        }
        Ok(w) => {
            for (slot, what) in [
                (
                    TicketSlot::Unconfirmed,
                    "stored, not yet confirmed by the gateway",
                ),
                (TicketSlot::Confirmed, "stored"),
            ] {
                if let Some(t) = w.ticket(slot) {
                    println!(
                        "ticket      {what} (gateway {}, scope {:#x}, resumption {} s, key id {})",
                        t.gateway_key, t.scope.0, t.lifetimes.resumption_s, t.anchor
                    );
                }
            }
        }
        Err(e) => println!("ticket      unreadable ({e}); it will be discarded"),
    }
    Ok(())
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 * 365.0 {
        bail!("--{name} must be a positive number of seconds (got {v})");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn run(args: RunArgs) -> Result<()> {
    let interval = secs("interval", args.interval)?;
    let config = DriverConfig {
        handshake_timeout: secs("handshake-timeout", args.handshake_timeout)?,
        backoff: BackoffConfig {
            initial: secs("backoff-initial", args.backoff_initial)?,
            max: secs("backoff-max", args.backoff_max)?,
        },
        danger_silent: args.danger_silent,
        ..DriverConfig::default()
    };
    if args.danger_silent {
        warn!("--danger-silent: this device emulates an attacker (it never says hello); for tests only");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    // Fail early and clearly: identity and anchors.
    open_store(&args.dir)?
        .anchors()
        .context("the device is not provisioned")?;

    // Signals set a flag every boot cycle watches.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        };
        info!(signal = name, "shutting down");
        let _ = stop_tx.send(true);
    });

    let mut app = App {
        interval,
        count: args.count,
        seq: 0,
        sent: 0,
        led: false,
    };
    if let Some(tcp) = args
        .connect
        .strip_prefix("tcp://")
        .map(|_| args.connect.as_str())
    {
        let url = tcp.to_string();
        let mtu = args.att_mtu;
        let make = move || TcpConnector::from_url(&url, mtu).map_err(anyhow::Error::from);
        // Check the address once before the loop.
        make()?;
        boot_loop(&args.dir, config, &mut app, stop_rx, || async { make() }).await
    } else if args.connect == "ble" || args.connect.starts_with("ble:") {
        run_ble(&args, config, &mut app, stop_rx).await
    } else {
        bail!(
            "--connect {:?}: expected tcp://HOST:PORT or ble[:ADAPTER]",
            args.connect
        )
    }
}

#[cfg(feature = "ble")]
async fn run_ble(
    args: &RunArgs,
    config: DriverConfig,
    app: &mut App,
    stop_rx: watch::Receiver<bool>,
) -> Result<()> {
    use vouch_peripheral::transport::ble::{BleConfig, BleConnector};
    let adapter = args.connect.strip_prefix("ble:").map(str::to_string);
    let att_mtu = args.att_mtu;
    anyhow::ensure!(
        (23..=517).contains(&att_mtu),
        "--att-mtu must be 23..=517 (got {att_mtu})"
    );
    let make = || {
        let adapter = adapter.clone();
        async move {
            BleConnector::start(BleConfig {
                adapter,
                max_att_mtu: att_mtu,
                ..BleConfig::default()
            })
            .await
            .context("starting the BLE GATT server (is bluetoothd running?)")
        }
    };
    boot_loop(&args.dir, config, app, stop_rx, make).await
}

#[cfg(not(feature = "ble"))]
async fn run_ble(
    _args: &RunArgs,
    _config: DriverConfig,
    _app: &mut App,
    _stop_rx: watch::Receiver<bool>,
) -> Result<()> {
    bail!("this vouch-peripheral was built without BLE support: rebuild with `--features ble` (Linux, BlueZ)")
}

/// The reference application's state, kept across simulated reboots.
struct App {
    interval: Duration,
    count: Option<u64>,
    seq: u64,
    sent: u64,
    led: bool,
}

/// Why one boot of the device ended.
enum Stop {
    /// The gateway asked for a reboot.
    Reboot,
    /// `--count` telemetry messages were sent.
    Done,
    /// SIGINT or SIGTERM.
    Signal,
    /// The driver stopped on its own (a fatal error).
    DriverStopped,
}

/// Boots the device (key store from disk, a fresh driver) until it stops; a
/// `reboot` command starts it again from what is on disk, as a real reboot
/// would (and so resumes with the stored ticket).
async fn boot_loop<C, F, Fut>(
    dir: &Path,
    config: DriverConfig,
    app: &mut App,
    mut stop_rx: watch::Receiver<bool>,
    mut make_connector: F,
) -> Result<()>
where
    C: Connector,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<C>>,
{
    loop {
        let store = open_store(dir)?;
        let connector = make_connector().await?;
        info!(
            id = %store.peripheral_id(),
            gateway = %connector.describe(),
            "device starting"
        );
        let (device, handle, mut events) = Device::new(store, connector, config)?;
        let (driver_stop, driver_stopped) = oneshot::channel::<()>();
        let driver = tokio::spawn(device.run(async move {
            let _ = driver_stopped.await;
        }));
        let stop = serve(app, &handle, &mut events, &mut stop_rx).await;
        let _ = driver_stop.send(());
        // Report what the driver says while it closes the session.
        let drain = async {
            while let Some(ev) = events.recv().await {
                note(&ev);
            }
        };
        let (result, ()) = tokio::join!(driver, drain);
        result.context("the device driver panicked")??;
        match stop {
            Stop::Reboot => info!("rebooting"),
            Stop::Done => {
                info!(sent = app.sent, "sent the requested telemetry; exiting");
                return Ok(());
            }
            Stop::Signal => return Ok(()),
            Stop::DriverStopped => bail!("the device driver stopped"),
        }
    }
}

/// Logs an event the application does not otherwise act on.
fn note(ev: &Event) {
    if let Event::SessionEnded(end) = ev {
        debug!(reason = %end, "session ended");
    }
}

/// One boot: telemetry on a timer, commands from the gateway, until a stop.
async fn serve(
    app: &mut App,
    handle: &DeviceHandle,
    events: &mut Events,
    stop_rx: &mut watch::Receiver<bool>,
) -> Stop {
    let mut scope: Option<Scope> = None;
    let mut ticker = new_ticker(app.interval);
    loop {
        if *stop_rx.borrow() {
            return Stop::Signal;
        }
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Stop::DriverStopped };
                match ev {
                    Event::Established(s) => {
                        if !s.scope.contains(Scope::TELEMETRY) {
                            warn!(scope = format_args!("{:#x}", s.scope.0), "the granted scope has no telemetry: sending nothing");
                        }
                        scope = Some(s.scope);
                        ticker.reset_immediately();
                    }
                    Event::SessionEnded(end) => {
                        note(&Event::SessionEnded(end));
                        scope = None;
                    }
                    Event::AnchorsUpdated { serial, primary } => {
                        println!("anchors-updated serial={serial} primary={primary}");
                    }
                    Event::Data(data) => {
                        println!("recv {}", printable(&data));
                        let granted = scope.unwrap_or_default();
                        let decision = match std::str::from_utf8(&data) {
                            Ok(text) => decide(text, granted),
                            Err(_) => vouch_peripheral::reference::Decision {
                                command: None,
                                reply: "error: not a text command".into(),
                                refused: false,
                            },
                        };
                        if decision.refused {
                            warn!(command = %printable(&data), scope = format_args!("{:#x}", granted.0), "command refused: outside the granted scope");
                        }
                        if let Err(e) = handle.send(decision.reply.clone()).await {
                            warn!(error = %e, "could not send the reply");
                        }
                        match decision.command {
                            Some(Command::Led(on)) => {
                                app.led = on;
                                info!(led = on, "LED switched");
                            }
                            Some(Command::Interval(d)) => {
                                app.interval = d;
                                ticker = new_ticker(d);
                                info!(interval_ms = d.as_millis() as u64, "telemetry interval changed");
                            }
                            Some(Command::Reboot) => return Stop::Reboot,
                            None => {}
                        }
                    }
                    other => note(&other),
                }
            }
            _ = ticker.tick() => {
                if scope.is_some_and(|s| s.contains(Scope::TELEMETRY)) {
                    app.seq += 1;
                    let msg = telemetry(app.seq, app.led);
                    match handle.send(msg.clone()).await {
                        Ok(()) => {
                            println!("sent {msg}");
                            app.sent += 1;
                            if app.count.is_some_and(|c| app.sent >= c) {
                                return Stop::Done;
                            }
                        }
                        Err(e) => debug!(error = %e, "telemetry not sent"),
                    }
                }
            }
            _ = stop_rx.changed() => {}
        }
    }
}

fn new_ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}
