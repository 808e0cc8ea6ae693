//! `import`: enroll peripherals in bulk from CSV or NDJSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use vouch_backend::import::{self, Format};

use super::{api, local_actor, open_target, remote, Cli, Target};

// The flags of `import`.
#[derive(Args, Debug)]
pub(super) struct ImportArgs {
    /// The file (`-` for standard input).
    file: PathBuf,
    /// Input format (default: from the file extension, .csv or NDJSON).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Check every row against the registry; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rows per transaction (with --url, the backend's own: 500).
    #[arg(long, default_value_t = 200)]
    batch_size: usize,
    /// Append a per-row report (NDJSON) to this file, each batch right after it committed.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(super) enum FormatArg {
    Csv,
    Ndjson,
}

/// Enrolls peripherals in bulk; exit 2 if some rows were refused.
pub(super) async fn import(cli: &Cli, args: &ImportArgs) -> Result<ExitCode> {
    let (file, dry_run, batch_size) = (args.file.as_path(), args.dry_run, args.batch_size);
    let report = args.report.as_deref();
    let format = match args.format {
        Some(FormatArg::Csv) => Format::Csv,
        Some(FormatArg::Ndjson) => Format::Ndjson,
        None => Format::from_path(file),
    };
    let store = match open_target(cli).await? {
        Target::Local { store, .. } => store,
        Target::Remote(admin) => return import_remote(cli, args, format, &admin).await,
    };
    let rows = if file == Path::new("-") {
        import::read_rows(std::io::stdin().lock(), format)
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        import::read_rows(f, format)
    }
    .context("cannot read the input")?;
    let mut report_file = match report {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut write_error = None;
    let summary = import::run(
        &store,
        rows,
        dry_run,
        batch_size,
        &local_actor(),
        |reports| {
            bar.inc(reports.len() as u64);
            for r in reports {
                if let Some(e) = &r.error {
                    bar.suspend(|| eprintln!("line {}: {} ({})", r.line, e.message, e.code));
                }
            }
            if let Some(f) = report_file.as_mut() {
                let mut buf = String::new();
                for r in reports {
                    if let Ok(line) = serde_json::to_string(r) {
                        buf.push_str(&line);
                        buf.push('\n');
                    }
                }
                if let Err(e) = f.write_all(buf.as_bytes()).and_then(|()| f.sync_data()) {
                    write_error = Some(e);
                }
            }
        },
    )
    .await
    .map_err(api)?;
    bar.finish_and_clear();
    store.close().await;
    if let Some(e) = write_error {
        bail!("cannot write the report: {e}");
    }
    super::output::record(cli.json, &summary)?;
    Ok(if summary.errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The largest file `--url` sends in one request (the admin API's body
/// limit, 64 MiB).
const MAX_REMOTE_IMPORT: usize = 64 * 1024 * 1024;

/// An import through the admin API: the file in one request, the per-row
/// report and the summary printed as the local import prints them.
async fn import_remote(
    cli: &Cli,
    args: &ImportArgs,
    format: Format,
    admin: &remote::Admin,
) -> Result<ExitCode> {
    let file = args.file.as_path();
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b)
            .context("cannot read standard input")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    if bytes.len() > MAX_REMOTE_IMPORT {
        bail!(
            "{} is {} MiB; the admin API takes at most 64 MiB in one import: split it, or import on the backend's host",
            file.display(),
            bytes.len() >> 20
        );
    }
    let (name, content_type) = match format {
        Format::Csv => ("csv", "text/csv"),
        Format::Ndjson => ("ndjson", "application/x-ndjson"),
    };
    let path = format!(
        "/v1/admin/peripherals/import{}",
        remote::query(&[
            ("format", Some(name.to_owned())),
            ("dry_run", Some(args.dry_run.to_string())),
        ])
    );
    let answer = admin
        .send(
            reqwest::Method::POST,
            &path,
            Some(remote::Body::Bytes(bytes.into(), content_type)),
        )
        .await?;
    let rows = answer["rows"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        if let Some(e) = r.get("error") {
            eprintln!(
                "line {}: {} ({})",
                r["line"],
                e["message"].as_str().unwrap_or_default(),
                e["code"].as_str().unwrap_or_default()
            );
        }
    }
    if let Some(p) = args.report.as_deref() {
        let mut buf = String::new();
        for r in &rows {
            buf.push_str(&r.to_string());
            buf.push('\n');
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|mut f| f.write_all(buf.as_bytes()).and_then(|()| f.sync_data()))
            .with_context(|| format!("cannot write the report {}", p.display()))?;
    }
    let summary = &answer["summary"];
    super::output::record(cli.json, summary)?;
    Ok(if summary["errors"].as_u64().unwrap_or(0) > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
