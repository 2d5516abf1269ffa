//! Progress of a dedup job, with build/pack's conventions (`--progress auto|bar|log|quiet`): an
//! indicatif bar on a terminal (auto), a log line every 10 s otherwise, and one line per
//! finished phase in both.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use super::search::Tally;
use crate::build::Progress;

/// Between two `--progress log` lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    /// The running phase (`reading`, `searching`, …).
    phase: Mutex<String>,
    phase_start: Mutex<Option<Instant>>,
    /// Work units of the running phase: all of them (0: unknown) and those done so far,
    /// both set by the workers.
    total: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

pub(crate) struct Meter {
    state: Arc<State>,
    bar: Option<ProgressBar>,
    quiet: bool,
    thread: Option<JoinHandle<()>>,
}

impl Meter {
    pub fn start(mode: Progress) -> Meter {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Log,
            m => m,
        };
        let state = Arc::new(State::default());
        let bar = (mode == Progress::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {msg:12} [{bar:30}] {percent:>3}% ETA {eta}",
            )
            .expect("valid template");
            bar.set_style(style);
            bar
        });
        let thread = match mode {
            Progress::Bar => {
                let (st, bar) = (state.clone(), bar.clone().expect("bar mode"));
                Some(std::thread::spawn(move || draw(&st, &bar)))
            }
            Progress::Log => {
                let st = state.clone();
                Some(std::thread::spawn(move || log(&st)))
            }
            _ => None,
        };
        Meter {
            state,
            bar,
            quiet: mode == Progress::Quiet,
            thread,
        }
    }

    /// Start a phase; its counters (see [`Meter::tally`]) restart at 0.
    pub fn phase(&self, name: &str) {
        *self.state.phase.lock().expect("not poisoned") = name.to_string();
        *self.state.phase_start.lock().expect("not poisoned") = Some(Instant::now());
        self.state.total.store(0, Ordering::Relaxed);
        self.state.done.store(0, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_message(name.to_string());
        }
    }

    /// The running phase's counters, for the workers to set and advance.
    pub fn tally(&self) -> Tally<'_> {
        Tally {
            total: &self.state.total,
            done: &self.state.done,
        }
    }

    /// A line of its own (above the bar), unless quiet.
    pub fn say(&self, msg: impl std::fmt::Display) {
        let line = format!("llava-pack dedup: {msg}");
        match &self.bar {
            // A bar forced on a non-terminal draws nothing, and would swallow the line too.
            Some(bar) if !bar.is_hidden() => bar.println(line),
            Some(_) => eprintln!("{line}"),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn draw(st: &State, bar: &ProgressBar) {
    while !st.stop.load(Ordering::Relaxed) {
        bar.set_length(st.total.load(Ordering::Relaxed));
        bar.set_position(st.done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log(st: &State) {
    let mut last = Instant::now();
    while !st.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < LOG_EVERY {
            continue;
        }
        last = Instant::now();
        let name = st.phase.lock().expect("not poisoned").clone();
        let start = *st.phase_start.lock().expect("not poisoned");
        if let Some(start) = start {
            let (total, done) = (
                st.total.load(Ordering::Relaxed),
                st.done.load(Ordering::Relaxed),
            );
            eprintln!(
                "{}",
                log_line(&name, done, total, start.elapsed().as_secs_f64())
            );
        }
    }
}

/// One `--progress log` line: phase, share done and the ETA from this phase's rate so far.
fn log_line(phase: &str, done: u64, total: u64, secs: f64) -> String {
    let mut line = format!("llava-pack dedup: {phase}");
    if total > 0 {
        let done = done.min(total);
        line += &format!(": {:.0}%", 100.0 * done as f64 / total as f64);
        if done > 0 {
            let eta = secs * (total - done) as f64 / done as f64;
            line += &format!(", ETA {eta:.0}s");
        }
    }
    line + &format!(" ({secs:.0}s in this phase)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_reports_share_and_eta_of_the_phase() {
        assert_eq!(
            log_line("searching", 250, 1000, 10.0),
            "llava-pack dedup: searching: 25%, ETA 30s (10s in this phase)"
        );
        let none_yet = log_line("reading", 0, 10, 1.0);
        assert!(
            none_yet.contains("0%") && !none_yet.contains("ETA"),
            "{none_yet}"
        );
        assert!(!log_line("writing", 5, 0, 1.0).contains('%'));
    }
}
