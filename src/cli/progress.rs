//! What the user sees while it runs: indicatif bars on stderr when stderr is a terminal,
//! otherwise plain log lines (a CI log or a file gets one line per step, not redraws).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or its log-line stand-in.
pub struct Progress {
    bar: ProgressBar,
    terminal: bool,
    last_line: Mutex<Option<Instant>>,
}

impl Progress {
    /// A bar of `len` units, drawn when stderr is a terminal.
    pub fn new(len: u64, template: &str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(len),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        if terminal {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            terminal,
            last_line: Mutex::new(None),
        }
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// A line above the bar, or on stderr when there is no bar.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.terminal {
            self.bar.println(line);
        } else {
            eprintln!("{}", line.as_ref());
        }
    }

    /// A status line: the bar's message on a terminal, a log line at most every 2 s
    /// otherwise (and always when `force`).
    pub fn status(&self, line: impl Into<String>, force: bool) {
        let line = line.into();
        if self.terminal {
            self.bar.set_message(line);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if force || last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            *last = Some(Instant::now());
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
