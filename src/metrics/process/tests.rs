use super::*;
use prometheus::{Encoder, Registry, TextEncoder};

/// The exposition text of a registry holding only the process collector.
fn scrape(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn value(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time of this process (all threads), seconds.
fn process_cpu() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Spins this thread until it has used `seconds` of CPU.
fn burn(seconds: f64) {
    let start = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut x = 0u64;
    while cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - start < seconds {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

#[test]
fn cpu_seconds_move_in_fractions_of_a_second() {
    let registry = Registry::new();
    registry
        .register(Box::new(ProcessCollector::new()))
        .unwrap();
    let before = value(&scrape(&registry), "process_cpu_seconds_total");
    burn(0.3);
    let clock_low = process_cpu();
    let after = value(&scrape(&registry), "process_cpu_seconds_total");
    let clock_high = process_cpu();
    // The whole-second counter of the crate's collector reads a rise of 0 or
    // 1 here; ours follows the kernel to the clock tick (10 ms), give or
    // take what other test threads burn meanwhile.
    let rise = after - before;
    assert!(rise >= 0.25, "0.3 s of CPU burnt, counter rose {rise}");
    assert!(
        after >= clock_low - 0.05 && after <= clock_high + 0.05,
        "counter {after}, process CPU clock {clock_low}..{clock_high}"
    );
}

#[test]
fn every_standard_process_metric_is_exported() {
    let registry = Registry::new();
    registry
        .register(Box::new(ProcessCollector::new()))
        .unwrap();
    let text = scrape(&registry);
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    for gauge in [
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(text.contains(&format!("# TYPE {gauge} gauge")), "{text}");
        assert!(value(&text, gauge) > 0.0, "{gauge}: {text}");
    }
    let fds = value(&text, "process_open_fds");
    assert!(fds <= value(&text, "process_max_fds"), "{text}");
    // Started in the past, after 2020.
    let started = value(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > 1.6e9 && started <= now + 1.0, "{started}");
}

#[test]
fn stat_fields_are_counted_after_the_command_name() {
    // A command name with spaces and a `)` of its own (proc(5) fields 1–24).
    let line = "4242 (fg (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                157 43 0 0 20 0 9 0 12345 104857600 2560 18446744073709551615";
    let stat = Stat::parse(line, 100.0, 4096.0).unwrap();
    assert_eq!(
        stat,
        Stat {
            cpu_seconds: 2.0,
            threads: 9.0,
            started_after_boot: 123.45,
            virtual_bytes: 104_857_600.0,
            resident_bytes: 2560.0 * 4096.0,
        }
    );
    let odd = "4242 (fg) S 1 4242 4242 0 -1 4194560 1000 0 0 0 3 4";
    assert_eq!(Stat::parse(odd, 100.0, 4096.0), None);
    let parsed = Stat::parse(
        "1 (a) S 1 1 1 0 -1 0 0 0 0 0 7 0 0 0 20 0 1 0 0 0 0",
        100.0,
        4096.0,
    );
    assert_eq!(parsed.map(|s| s.cpu_seconds), Some(0.07));
}
