//! The report as Markdown tables: what `vouch-sim bench` prints, and what
//! the README shows.

use std::fmt::Write;

use super::{BackendReport, BenchReport, Bytes, Machine, PeerHandshake, Ratio};

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
            peer_row(&mut o, p.name, &p.full);
        }
    }
    let _ = writeln!(
        o,
        "\nDevice: Vouch's peripheral; the TLS client; the EDHOC and Noise initiator. \
         Vouch's backend figure is the protocol work of one vouch (open, verify, sign); \
         the registry, HTTPS and storage are in the backend table. TLS bytes are every \
         record both ways, including the two session tickets rustls sends by default \
         after the handshake.\n"
    );

    let _ = writeln!(
        o,
        "Vouch ÷ peer (below 1: Vouch needs less; resumed rows compare resumption with resumption):\n"
    );
    let _ = writeln!(
        o,
        "| against | device CPU | all parties' CPU | bytes on air |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    for ((_, p), (_, ratios)) in r.peers.iter().into_iter().zip(r.ratios.iter()) {
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
    for (_, p) in r.peers.iter() {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            p.name, p.provides.mutual_auth, p.provides.third_party, p.provides.identity_hiding
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
        "| | per core | ÷ raw crypto bound (≥ 0.60) | ÷ rustls server in memory (≥ 1.5) \
         | ÷ rustls server over TCP | wall, all cores |"
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
    let _ = writeln!(
        o,
        "| rustls server, full mTLS handshakes in memory (Ed25519 {}, P-256 {}; the faster \
         counts) | {} | | 1.00 | | |",
        per_s(b.rustls_server_handshakes_per_s_ed25519),
        per_s(b.rustls_server_handshakes_per_s_p256),
        per_s(b.rustls_server_handshakes_per_s),
    );
    let _ = writeln!(
        o,
        "| rustls server, full mTLS handshakes over loopback TCP (Ed25519 {}, P-256 {}; the \
         faster counts) | {} | | | 1.00 | |",
        per_s(b.rustls_server_tcp_handshakes_per_s_ed25519),
        per_s(b.rustls_server_tcp_handshakes_per_s_p256),
        per_s(b.rustls_server_tcp_handshakes_per_s),
    );
    let _ = writeln!(
        o,
        "\nIn memory: {}. Over TCP: a tokio-rustls server accepting fresh connections on \
         loopback (handshake, its tickets, close), per CPU second of its own threads, like \
         the backend's figure.{}\n",
        b.rustls_server_method,
        if b.database == "SQLite" {
            ""
        } else {
            " The database server's own processes are not counted in the backend's figure."
        }
    );
}
