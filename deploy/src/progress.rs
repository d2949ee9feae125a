//! Progress of long operations on standard error: bars on a terminal,
//! a line per step otherwise (logs, CI), nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use cfs_oci::pull::{PullEvent, PullProgress};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

/// Shows a pull's progress.
#[derive(Debug)]
pub enum PullDisplay {
    /// Nothing.
    Quiet,
    /// One line per layer and step.
    Lines,
    /// An overall bar and one bar per layer in flight.
    Bars(Bars),
}

/// The bars of [`PullDisplay::Bars`].
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    layers: Mutex<HashMap<String, ProgressBar>>,
}

impl PullDisplay {
    /// The display for this run: `quiet` wins, then bars if standard
    /// error is a terminal.
    pub fn new(quiet: bool) -> PullDisplay {
        if quiet {
            PullDisplay::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::new();
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(style(
                "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            ));
            overall.set_prefix("pull");
            PullDisplay::Bars(Bars {
                multi,
                overall,
                layers: Mutex::new(HashMap::new()),
            })
        } else {
            PullDisplay::Lines
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// `sha256:0123456789ab`: enough of a digest to tell layers apart.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

impl PullProgress for PullDisplay {
    fn event(&self, event: PullEvent<'_>) {
        match (self, event) {
            (PullDisplay::Quiet, _) => {}
            (
                PullDisplay::Lines,
                PullEvent::Layers {
                    fetch,
                    total,
                    bytes,
                },
            ) => {
                eprintln!("fetching {fetch} of {total} layers, {}", HumanBytes(bytes));
            }
            (PullDisplay::Lines, PullEvent::LayerDone { diff_id }) => {
                eprintln!("layer {} stored", short(diff_id));
            }
            (PullDisplay::Lines, PullEvent::GeneratingImages) => {
                eprintln!("generating the EROFS images");
            }
            (PullDisplay::Lines, _) => {}
            (PullDisplay::Bars(bars), event) => bars.event(event),
        }
    }
}

impl Bars {
    fn event(&self, event: PullEvent<'_>) {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            PullEvent::Layers {
                fetch,
                total,
                bytes,
            } => {
                self.overall.set_length(bytes);
                self.overall
                    .set_message(format!("{fetch} of {total} layers to fetch"));
            }
            PullEvent::LayerStarted { diff_id, size } => {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(style("{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {msg}"));
                bar.set_prefix("layer");
                bar.set_message(short(diff_id).to_owned());
                layers.insert(diff_id.to_owned(), bar);
            }
            PullEvent::LayerRead { diff_id, bytes } => {
                self.overall.inc(bytes);
                if let Some(bar) = layers.get(diff_id) {
                    bar.inc(bytes);
                }
            }
            PullEvent::LayerDone { diff_id } => {
                if let Some(bar) = layers.remove(diff_id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            PullEvent::GeneratingImages => {
                self.overall.set_message("generating the EROFS images");
            }
            _ => {}
        }
    }
}

impl Drop for PullDisplay {
    fn drop(&mut self) {
        if let PullDisplay::Bars(bars) = self {
            // Bars of layers that failed are still up.
            let _ = bars.multi.clear();
        }
    }
}
