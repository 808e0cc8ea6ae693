//! The report as Markdown tables: what `vouch-sim bench` prints, and what
//! the README shows.

use std::fmt::Write;

use super::{
    BackendReport, BenchReport, Best, BestOf, Bytes, Machine, PeerHandshake, Ratio, RatioVs,
    RatiosVsBest,
};

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn per_s(v: f64) -> String {
    let v = v.round() as u64;
    if v >= 1000 {
        format!("{},{:03}/s", v / 1000, v % 1000)
    } else {
        format!("{v}/s")
    }
}

fn flights(b: &Bytes) -> String {
    let during: Vec<String> = b
        .messages
        .iter()
        .filter(|m| !m.post_handshake)
        .map(|m| m.bytes.to_string())
        .collect();
    let after: Vec<&super::Flight> = b.messages.iter().filter(|m| m.post_handshake).collect();
    let mut s = during.join(" + ");
    if !after.is_empty() {
        let n: usize = after.iter().map(|m| m.bytes).sum();
        let _ = write!(s, " (+ {n} of tickets after)");
    }
    s
}

fn ratio(r: f64) -> String {
    format!("{r:.2}")
}

/// A configuration's name without the `rustls mTLS ` every one starts with.
fn short(name: &str) -> &str {
    name.strip_prefix("rustls mTLS ").unwrap_or(name)
}

fn ratio_vs(r: &RatioVs) -> String {
    format!("{} (vs {})", ratio(r.ratio), short(&r.against_name))
}

fn ratios_vs_best(r: &RatiosVsBest) -> String {
    format!(
        "{} | {} | {}",
        ratio_vs(&r.device_cpu),
        ratio_vs(&r.total_cpu),
        ratio_vs(&r.bytes_on_air)
    )
}

fn best_cells(b: &BestOf) -> String {
    let cell = |x: &Best, v: String| format!("{v} ({})", short(&x.name));
    format!(
        "{} | {} | {} | {}",
        cell(&b.client_cpu_us, us(b.client_cpu_us.value)),
        cell(&b.server_cpu_us, us(b.server_cpu_us.value)),
        cell(&b.total_cpu_us, us(b.total_cpu_us.value)),
        cell(&b.bytes_on_air, format!("{:.0}", b.bytes_on_air.value)),
    )
}

fn peer_row(out: &mut String, name: &str, h: &PeerHandshake) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} |",
        us(h.cpu_us.initiator),
        us(h.cpu_us.responder),
        us(h.cpu_us.total),
        h.bytes_on_air.total,
        flights(&h.bytes_on_air),
        h.round_trips,
    );
}

fn ratio_cells(r: &Ratio) -> String {
    format!(
        "{} | {} | {}",
        ratio(r.device_cpu),
        ratio(r.total_cpu),
        ratio(r.bytes_on_air)
    )
}

/// The report as Markdown: the handshakes, the ratios, the backend, and
/// what each handshake provides.
pub fn render(r: &BenchReport) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "Measured on {} ({} logical CPUs, Linux {}), {} build, by `{}`; medians of {} \
         handshakes per row after {} not counted, all parties in one process and one \
         thread, each timed on its own calls.\n",
        m.cpu, m.cpus, m.kernel, m.profile, m.command, r.method.iterations, r.method.warmup
    );

    let _ = writeln!(
        o,
        "| handshake | device CPU | other side CPU | all parties | bytes on air | messages | round trips |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---|---|");
    let v = &r.vouch;
    for (name, h, extra) in [
        ("**Vouch** full", &v.full, " + 1 to the backend"),
        ("**Vouch** resumption", &v.resumption, ", no backend"),
    ] {
        let other = if h.backend_round_trips > 0 {
            format!(
                "gateway {} + backend {}",
                us(h.cpu_us.gateway),
                us(h.cpu_us.backend)
            )
        } else {
            format!("gateway {}", us(h.cpu_us.gateway))
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {other} | {} | {} | {} | {}{extra} |",
            us(h.cpu_us.peripheral),
            us(h.cpu_us.total),
            h.bytes_on_air.total,
            flights(&h.bytes_on_air),
            h.round_trips,
        );
    }
    for (_, p) in r.peers.iter() {
        if let Some(res) = &p.resumed {
            peer_row(&mut o, &format!("{}, full", p.name), &p.full);
            peer_row(&mut o, &format!("{}, resumed", p.name), res);
        } else {
            peer_row(&mut o, &p.name, &p.full);
        }
    }
    for n in &r.rustls.not_measured {
        let _ = writeln!(o, "| {} | not measured: {} | | | | | |", n.name, n.why);
    }
    let _ = writeln!(
        o,
        "\nDevice: Vouch's peripheral; the TLS client; the EDHOC and Noise initiator. \
         Vouch's backend figure is the protocol work of one vouch (open, verify, sign) on the \
         backend's default crypto provider (aws-lc); \
         the registry, HTTPS and storage are in the backend table. TLS bytes are every \
         record both ways, including the two session tickets rustls sends by default \
         after the handshake. rustls runs in {} configurations, each with its own \
         CryptoProvider: provider (ring; aws-lc-rs, rustls's default), certificates \
         (Ed25519; ECDSA P-256) and key exchange (X25519; X25519MLKEM768, rustls's \
         default, aws-lc-rs only).\n",
        r.rustls.measured.len()
    );

    let tcp_rows: Vec<_> = r
        .peers
        .rustls
        .iter()
        .filter_map(|(_, p)| Some((p, p.full.tcp?, p.resumed.as_ref()?.tcp?)))
        .collect();
    if let Some((_, first, _)) = tcp_rows.first() {
        let _ = writeln!(
            o,
            "rustls over loopback TCP (tokio-rustls, {} connections in flight, {} per row, \
             a fresh connection each: handshake, tickets, close; CPU of each side's threads \
             per handshake, socket and runtime included; bytes counted on the client's \
             socket):\n",
            first.concurrency, first.handshakes
        );
        let _ = writeln!(
            o,
            "| configuration | full: client CPU | server CPU | bytes | resumed: client CPU \
             | server CPU | bytes | server full handshakes/s per core |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (p, full, res) in &tcp_rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} | {} | {} | {:.0} | {} |",
                p.name,
                us(full.client_cpu_us),
                us(full.server_cpu_us),
                full.bytes_on_air,
                us(res.client_cpu_us),
                us(res.server_cpu_us),
                res.bytes_on_air,
                per_s(full.server_handshakes_per_s),
            );
        }
        let _ = writeln!(o);
    }

    let b = &r.rustls;
    let _ = writeln!(
        o,
        "The best rustls configuration for each figure (what every ratio against rustls \
         compares with):\n"
    );
    let _ = writeln!(
        o,
        "| rustls, best per figure | client CPU | server CPU | both sides | bytes on air |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for (name, best) in [
        ("full, in memory", &b.best_full),
        ("resumed, in memory", &b.best_resumed),
        ("full, over loopback TCP", &b.best_full_tcp),
        ("resumed, over loopback TCP", &b.best_resumed_tcp),
    ] {
        let _ = writeln!(o, "| {name} | {} |", best_cells(best));
    }
    let _ = writeln!(o);

    let _ = writeln!(
        o,
        "Vouch ÷ peer (below 1: Vouch needs less; resumed rows compare resumption with resumption):\n"
    );
    let _ = writeln!(
        o,
        "| against | device CPU | all parties' CPU | bytes on air |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| rustls mTLS, full: each figure against the best of {n} configurations | {} |",
        ratios_vs_best(&r.ratios.rustls.full),
        n = r.rustls.measured.len()
    );
    let _ = writeln!(
        o,
        "| rustls mTLS, resumed: each figure against the best of {n} configurations | {} |",
        ratios_vs_best(&r.ratios.rustls.resumed),
        n = r.rustls.measured.len()
    );
    for ((_, p), (_, ratios)) in r.peers.others().into_iter().zip(r.ratios.others()) {
        if let Some(res) = &ratios.resumed {
            let _ = writeln!(o, "| {}, full | {} |", p.name, ratio_cells(&ratios.full));
            let _ = writeln!(o, "| {}, resumed | {} |", p.name, ratio_cells(res));
        } else {
            let _ = writeln!(o, "| {} | {} |", p.name, ratio_cells(&ratios.full));
        }
    }

    render_backend_into(&mut o, &r.backend);

    let _ = writeln!(o, "What each handshake provides:\n");
    let _ = writeln!(
        o,
        "| handshake | mutual authentication | a third party vouches | identity hiding |"
    );
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| **Vouch** | {} | {} | {} |",
        v.provides.mutual_auth, v.provides.third_party, v.provides.identity_hiding
    );
    let rustls_rows = r.peers.rustls.first().map(|(_, p)| {
        (
            format!("rustls mTLS (all {} configurations)", r.peers.rustls.len()),
            p,
        )
    });
    let others = r.peers.others().map(|(_, p)| (p.name.clone(), p));
    for (name, p) in rustls_rows.into_iter().chain(others) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            name, p.provides.mutual_auth, p.provides.third_party, p.provides.identity_hiding
        );
    }
    let _ = writeln!(o);
    for (_, p) in r.peers.iter() {
        let _ = writeln!(o, "- {}: {}.", p.name, p.what);
    }
    o
}

/// The backend table alone, for `--backend-only`.
pub fn render_backend(m: &Machine, b: &BackendReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Measured on {} ({} logical CPUs, Linux {}), {} build, by `{}`.",
        m.cpu, m.cpus, m.kernel, m.profile, m.command
    );
    render_backend_into(&mut o, b);
    o
}

fn render_backend_into(o: &mut String, b: &BackendReport) {
    let _ = writeln!(o, "\nBackend over real HTTPS (TLS 1.3, the gateway's client certificate, keep-alive, {}), per server core ({} runtime threads, {} requests in flight, {} vouches per mode):\n", b.database, b.server_threads, b.concurrency, b.vouches);
    let _ = writeln!(
        o,
        "| | per core | ÷ raw crypto bound (≥ 0.85) | ÷ rustls server in memory (≥ 1.5) \
         | ÷ rustls server over TCP (≥ 1.5) | wall, all cores |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| raw crypto bound: one vouch's open + verify + sign, one core | {} ({}) | 1.00 | | | |",
        per_s(b.crypto_bound_per_s),
        us(b.crypto_bound_us)
    );
    for (name, rate, bound, mem, tcp, wall) in [
        (
            "single vouches".to_owned(),
            b.vouches_per_s,
            b.ratio_to_bound,
            b.vs_rustls_server,
            b.vs_rustls_server_tcp,
            b.wall_vouches_per_s,
        ),
        (
            format!("batched ×{}", b.batch),
            b.vouches_per_s_batched,
            b.ratio_to_bound_batched,
            b.vs_rustls_server_batched,
            b.vs_rustls_server_tcp_batched,
            b.wall_vouches_per_s_batched,
        ),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} |",
            per_s(rate),
            ratio(bound),
            ratio(mem),
            ratio(tcp),
            per_s(wall)
        );
    }
    let n = b.rustls_servers.len();
    let _ = writeln!(
        o,
        "| rustls server, full mTLS handshakes in memory: the fastest of {n} configurations, \
         {} | {} | | 1.00 | | |",
        short(&b.rustls_server_config_name),
        per_s(b.rustls_server_handshakes_per_s),
    );
    let _ = writeln!(
        o,
        "| rustls server, full mTLS handshakes over loopback TCP: the fastest of {n} \
         configurations, {} | {} | | | 1.00 | |",
        short(&b.rustls_server_tcp_config_name),
        per_s(b.rustls_server_tcp_handshakes_per_s),
    );
    let _ = writeln!(
        o,
        "\nThe vouch path's levers (issue 21), one by one, each on a backend of its own in \
         this run (the last is the default, the figures above):\n\n| configuration | raw \
         bound | single per core | ÷ bound | batched per core | ÷ bound | batched ÷ rustls \
         over TCP |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    for l in &b.levers {
        let _ = writeln!(
            o,
            "| {} (`{}`, {} keys) | {} | {} | {} | {} | {} | {} |",
            l.name,
            l.provider,
            l.decoded_keys,
            us(l.crypto_bound_us),
            per_s(l.vouches_per_s),
            ratio(l.ratio_to_bound),
            per_s(l.vouches_per_s_batched),
            ratio(l.ratio_to_bound_batched),
            ratio(l.vs_rustls_server_tcp_batched)
        );
    }
    let _ = writeln!(
        o,
        "\n| rustls server configuration | full handshakes/s per core, in memory | over \
         loopback TCP |"
    );
    let _ = writeln!(o, "|---|---:|---:|");
    for s in &b.rustls_servers {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            short(&s.name),
            per_s(s.in_memory_per_s),
            per_s(s.tcp_per_s)
        );
    }
    let _ = writeln!(
        o,
        "\nrustls server: {}; like the backend's figure.{}\n",
        b.rustls_server_method,
        if b.database == "SQLite" {
            ""
        } else {
            " The database server's own processes are not counted in the backend's figure."
        }
    );
}
