//! The report as a table for a terminal.

use std::fmt::Write;

use super::{Percentiles, Report};

/// Renders the report as aligned text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, r);
    out
}

fn write_all(o: &mut String, r: &Report) -> std::fmt::Result {
    let a = &r.admission;
    let model = match r.rate {
        Some(rate) => format!("open model, {rate} arrivals/s"),
        None => "closed model".to_string(),
    };
    writeln!(
        o,
        "flashgate burst against {} ({model}, {} connections)",
        r.target, r.concurrency
    )?;
    writeln!(o)?;
    writeln!(o, "admission")?;
    row(o, "requests sent", a.sent)?;
    row(o, "answered", a.answered)?;
    row(o, "admitted (tickets)", a.admitted)?;
    row(o, "duration", format!("{:.3} s", a.duration_seconds))?;
    row(
        o,
        "throughput",
        format!("{:.0} answers/s", a.throughput_per_second),
    )?;
    row(
        o,
        "admissions",
        format!("{:.0} tickets/s", a.admitted_per_second),
    )?;
    percentiles(o, "latency", &a.latency_ms, "ms")?;
    writeln!(o, "  answers")?;
    for c in &a.answers {
        let code = c.code.as_deref().unwrap_or("");
        writeln!(o, "    {:<3} {:<28} {:>10}", c.status, code, c.count)?;
    }
    for (kind, n) in &a.errors {
        writeln!(o, "    ERR {kind:<28} {n:>10}")?;
    }

    if let Some(t) = &r.tickets {
        writeln!(o)?;
        writeln!(o, "tickets (polled for {:.1} s)", t.poll_seconds)?;
        row(o, "completed", t.completed)?;
        row(o, "failed", t.failed)?;
        if t.cancelled + t.expired + t.vanished > 0 {
            row(o, "cancelled", t.cancelled)?;
            row(o, "expired", t.expired)?;
            row(o, "vanished (404)", t.vanished)?;
        }
        row(o, "never finished", t.never_finished)?;
        row(o, "most attempts", t.max_attempts)?;
        for (status, n) in &t.upstream_statuses {
            row(o, &format!("upstream answered {status}"), n)?;
        }
    }
    if let Some(w) = &r.wait_seconds {
        percentiles(o, "end-to-end wait", w, "s")?;
    }
    if let Some(e) = &r.eta_error_seconds {
        writeln!(
            o,
            "  {:<24} mean {:+.3} s, |mean| {:.3} s, p50 {:+.3}, p90 {:+.3}, p99 {:+.3}",
            "eta error (actual-eta)", e.mean, e.mean_absolute, e.p50, e.p90, e.p99
        )?;
    }
    if let Some(d) = &r.drain {
        row(
            o,
            "drain observed",
            format!(
                "{:.1} completions/s over {:.2} s ({} completions)",
                d.rate_per_second, d.seconds, d.completions
            ),
        )?;
    }
    if let Some(u) = &r.upstream {
        writeln!(o)?;
        writeln!(o, "upstream")?;
        row(o, "received", u.received)?;
        row(o, "distinct", u.distinct)?;
        row(o, "duplicates", u.duplicates)?;
        row(o, "errors injected", u.errors_injected)?;
        row(o, "tickets not seen", u.not_seen)?;
        match u.lost {
            Some(lost) => row(o, "lost", lost)?,
            None => row(o, "lost", "unknown (--no-poll)")?,
        }
        if !u.lost_examples.is_empty() {
            row(o, "lost e.g.", u.lost_examples.join(" "))?;
        }
    }
    Ok(())
}

fn row(o: &mut String, name: &str, value: impl std::fmt::Display) -> std::fmt::Result {
    writeln!(o, "  {name:<24} {value}")
}

fn percentiles(o: &mut String, name: &str, p: &Percentiles, unit: &str) -> std::fmt::Result {
    writeln!(
        o,
        "  {name:<24} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} {unit} (n={})",
        p.p50, p.p90, p.p99, p.p999, p.max, p.count
    )
}
