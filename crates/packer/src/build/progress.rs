//! Progress display: an indicatif bar on a terminal, a log line every 10 s otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::options::Progress;

#[derive(Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub samples: AtomicU64,
    pub rejects: AtomicU64,
    pub shards: AtomicU64,
    /// Input bytes behind the records written so far (drives the bar and the ETA): set with
    /// `records`, by the writer, never from the reader's read-ahead.
    pub bytes: AtomicU64,
}

pub struct Reporter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Reporter {
    pub fn start(mode: Progress, c: Arc<Counters>, total_bytes: Option<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Log,
            m => m,
        };
        let handle = match mode {
            Progress::Quiet | Progress::Auto => None,
            Progress::Bar => Some(spawn_bar(c, total_bytes, stop.clone())),
            Progress::Log => Some(spawn_log(c, total_bytes, stop.clone())),
        };
        Reporter { stop, handle }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn message(c: &Counters, rate: f64) -> String {
    format!(
        "{} records ({rate:.0}/s) → {} samples, {} rejects, {} shards",
        c.records.load(Ordering::Relaxed),
        c.samples.load(Ordering::Relaxed),
        c.rejects.load(Ordering::Relaxed),
        c.shards.load(Ordering::Relaxed),
    )
}

fn spawn_bar(c: Arc<Counters>, total: Option<u64>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% ETA {eta} {msg}",
        )
        .expect("valid template");
        bar.set_style(style);
        let t0 = Instant::now();
        let r0 = c.records.load(Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            let rate = (c.records.load(Ordering::Relaxed) - r0) as f64
                / t0.elapsed().as_secs_f64().max(1e-3);
            bar.set_position(c.bytes.load(Ordering::Relaxed));
            bar.set_message(message(&c, rate));
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
    })
}

fn spawn_log(c: Arc<Counters>, total: Option<u64>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r0 = c.records.load(Ordering::Relaxed);
        let b0 = c.bytes.load(Ordering::Relaxed);
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < Duration::from_secs(10) {
                continue;
            }
            last = Instant::now();
            eprintln!(
                "{}",
                log_line(&c, (r0, b0), t0.elapsed().as_secs_f64(), total)
            );
        }
    })
}

/// One `--progress log` line. The share done and the ETA come from the input bytes behind
/// the records written (`Counters::bytes`); the rate and ETA from this run's own progress
/// since `(records, bytes)` = `start`, so a resumed job's skipped records do not count.
fn log_line(c: &Counters, start: (u64, u64), secs: f64, total: Option<u64>) -> String {
    let (r0, b0) = start;
    let rate = (c.records.load(Ordering::Relaxed) - r0) as f64 / secs.max(1e-3);
    let done = c.bytes.load(Ordering::Relaxed);
    let eta = match total {
        Some(t) if done > b0 && t >= done => format!(
            ", {:.0}% of input, ETA {:.0}s",
            100.0 * done as f64 / t as f64,
            secs * (t - done) as f64 / (done - b0) as f64
        ),
        _ => String::new(),
    };
    format!("llava-pack: {}{eta}", message(c, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_reports_the_share_of_records_written() {
        let c = Counters::default();
        c.records.store(510, Ordering::Relaxed);
        c.samples.store(500, Ordering::Relaxed);
        c.rejects.store(10, Ordering::Relaxed);
        c.bytes.store(17_000, Ordering::Relaxed);
        let line = log_line(&c, (0, 0), 10.0, Some(100_000));
        assert!(line.contains("510 records (51/s)"), "{line}");
        assert!(line.contains("17% of input, ETA 49s"), "{line}");
        // Resumed after 10 records / 7,000 bytes: only this run's 10,000 bytes in 10 s count.
        let line = log_line(&c, (10, 7_000), 10.0, Some(100_000));
        assert!(line.contains("510 records (50/s)"), "{line}");
        assert!(line.contains("17% of input, ETA 83s"), "{line}");
        c.bytes.store(0, Ordering::Relaxed);
        assert!(!log_line(&c, (0, 0), 10.0, Some(100_000)).contains("ETA"));
    }
}
