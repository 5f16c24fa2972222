//! What the benchmarks report latencies with, and their `main`.

use std::time::Duration;

/// The `p`-th percentile (nearest rank) of `sorted`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with one decimal: `12.3 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// CPU time (user + system) used so far by `/proc/<pid>` (`self`, `self/task/<tid>`, a pid).
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th of the
    // line, so the 12th and 13th after it (0-based: 11 and 12).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time used so far by the other processes whose command line contains `pattern`.
pub fn cpu_of(pattern: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let own = std::process::id().to_string();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(pattern))
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

/// The `main` of a benchmark-like binary (`bench-transfers`, `bench-refresh`, `chaos`): installs
/// the crypto provider, parses the options (exit code 2 on a bad one), runs `run` on a
/// multi-threaded runtime; exit code 0 when it passes, 1 when it fails or errs.
pub fn main_of<O, Fut>(
    name: &str,
    parse: impl FnOnce() -> Result<O, Box<dyn std::error::Error + Send + Sync>>,
    run: impl FnOnce(O) -> Fut,
) -> std::process::ExitCode
where
    Fut: std::future::Future<Output = Result<bool, Box<dyn std::error::Error + Send + Sync>>>,
{
    mqtt_dsp_operator::install_crypto_provider();
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), ms(50));
        assert_eq!(percentile(&sorted, 99.0), ms(99));
        assert_eq!(percentile(&sorted[..1], 99.0), ms(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
