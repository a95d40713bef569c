//! How the jobs are shown: progress bars on a terminal, plain lines, JSON
//! lines, and `list`'s table.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use qemu_jobs::{JobState, JobStatus, Outcome, Progress};
use qemu_qapi_types::JobType;
use qemu_qmp::json::Ordered;

/// The jobs as aligned columns under a header; nothing when there is none.
pub(crate) fn format_table(rows: &[[String; 5]]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let header = ["ID", "TYPE", "STATUS", "PROGRESS", "ERROR"].map(String::from);
    let all: Vec<&[String; 5]> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// indicatif bars on stdout, a terminal.
    Bars,
    /// Plain lines.
    Lines,
    /// JSON lines.
    Json,
}

impl Mode {
    /// JSON lines if `json`, else bars when stdout is a terminal, else plain
    /// lines.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// The minimum time between two lines of a job that only say its progress.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Shows the jobs' states as they change.
pub(crate) struct Display {
    mode: Mode,
    multi: MultiProgress,
    jobs: HashMap<String, Shown>,
}

/// What was last shown of one job.
struct Shown {
    bar: Option<ProgressBar>,
    status: Option<JobStatus>,
    at: Option<Instant>,
    text: String,
    ended: bool,
}

impl Display {
    pub(crate) fn new(mode: Mode) -> Display {
        Display {
            mode,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            jobs: HashMap::new(),
        }
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix:<10.bold} {bar:30.cyan/blue} {percent:>3}% {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }

    /// Shows `state` of job `id` if there is something new to show.
    pub(crate) fn update(&mut self, id: &str, state: &JobState) -> io::Result<()> {
        let mode = self.mode;
        let multi = &self.multi;
        let shown = self.jobs.entry(id.to_owned()).or_insert_with(|| Shown {
            bar: (mode == Mode::Bars).then(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(Display::bar_style());
                bar.set_prefix(id.to_owned());
                bar
            }),
            status: None,
            at: None,
            text: String::new(),
            ended: false,
        });
        if shown.ended {
            return Ok(());
        }
        let p = &state.progress;
        match mode {
            Mode::Bars => {
                let bar = shown.bar.as_ref().expect("made in bar mode");
                bar.set_length(p.total);
                bar.set_position(p.current.min(p.total));
                match &state.outcome {
                    None => bar.set_message(format!(
                        "{} {} eta {}",
                        state.status.as_str(),
                        format_rate(p.rate),
                        format_eta(p.eta)
                    )),
                    Some(Outcome::Completed) => bar.finish_with_message("completed"),
                    Some(Outcome::Cancelled) => bar.abandon_with_message("cancelled"),
                    Some(Outcome::Failed { error }) => {
                        bar.abandon_with_message(format!("failed: {error}"))
                    }
                }
            }
            Mode::Lines => {
                let text = format_line(id, &state.status, p, state.outcome.as_ref());
                let now = Instant::now();
                let status_changed = shown.status.as_ref() != Some(&state.status);
                let due = shown
                    .at
                    .is_none_or(|t| now.duration_since(t) >= LINE_INTERVAL);
                // `concluded` (or `null`) is followed at once by how it ended.
                let ending = state.outcome.is_none()
                    && matches!(state.status, JobStatus::Concluded | JobStatus::Null);
                if !ending
                    && (state.outcome.is_some() || status_changed || (due && text != shown.text))
                {
                    let mut out = io::stdout().lock();
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    shown.text = text;
                    shown.at = Some(now);
                }
            }
            Mode::Json => {
                let text = format_json(
                    id,
                    state.job_type.as_ref(),
                    &state.status,
                    p,
                    state.outcome.as_ref(),
                )
                .to_string();
                if text != shown.text {
                    let mut out = io::stdout().lock();
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    shown.text = text;
                }
            }
        }
        shown.status = Some(state.status.clone());
        shown.ended = state.outcome.is_some();
        Ok(())
    }

    /// Prints a line on stderr (above the bars on a terminal).
    pub(crate) fn note(&self, text: &str) {
        if self.mode == Mode::Bars {
            self.multi.suspend(|| eprintln!("{text}"));
        } else {
            eprintln!("{text}");
        }
    }
}

/// A rate in bytes per second, binary units, no space (`4.0MiB/s`); `-`
/// when unknown.
fn format_rate(rate: Option<f64>) -> String {
    let Some(mut r) = rate.filter(|r| r.is_finite() && *r >= 0.0) else {
        return "-".into();
    };
    let mut unit = "B";
    for next in ["KiB", "MiB", "GiB", "TiB"] {
        if r < 1024.0 {
            break;
        }
        r /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{r:.0}B/s")
    } else {
        format!("{r:.1}{unit}/s")
    }
}

/// A time left as `1h02m03s`, `2m05s`, `7s`; `-` when unknown.
fn format_eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else { return "-".into() };
    let s = eta.as_secs_f64().round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `ID STATUS CURRENT/TOTAL PERCENT RATE eta ETA`; once ended, the outcome in
/// place of the status (and a failure's error in parentheses).
fn format_line(id: &str, status: &JobStatus, p: &Progress, outcome: Option<&Outcome>) -> String {
    let status = match outcome {
        None => status.as_str().to_owned(),
        Some(o) => outcome_word(o).to_owned(),
    };
    let mut line = format!(
        "{id} {status} {}/{} {:.1}% {} eta {}",
        p.current,
        p.total,
        p.fraction() * 100.0,
        format_rate(p.rate),
        match outcome {
            // No time left to a job that will not finish.
            Some(Outcome::Cancelled | Outcome::Failed { .. }) => "-".to_owned(),
            _ => format_eta(p.eta),
        }
    );
    if let Some(Outcome::Failed { error }) = outcome {
        line.push_str(&format!(" ({error})"));
    }
    line
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Cancelled => "cancelled",
        Outcome::Failed { .. } => "failed",
    }
}

/// One change as a JSON object: id, type, status, current, total, rate (B/s),
/// eta (s), and once ended, outcome (and error).
fn format_json(
    id: &str,
    job_type: Option<&JobType>,
    status: &JobStatus,
    p: &Progress,
    outcome: Option<&Outcome>,
) -> Ordered {
    let num = |v: Option<f64>| {
        v.and_then(serde_json::Number::from_f64)
            .map_or(Ordered::Null, Ordered::Number)
    };
    let mut members = vec![
        ("id".to_owned(), Ordered::String(id.to_owned())),
        (
            "type".to_owned(),
            job_type.map_or(Ordered::Null, |t| Ordered::String(t.as_str().to_owned())),
        ),
        (
            "status".to_owned(),
            Ordered::String(status.as_str().to_owned()),
        ),
        ("current".to_owned(), Ordered::Number(p.current.into())),
        ("total".to_owned(), Ordered::Number(p.total.into())),
        ("rate".to_owned(), num(p.rate.map(|r| r.round()))),
        (
            "eta".to_owned(),
            num(p.eta.map(|e| (e.as_secs_f64() * 10.0).round() / 10.0)),
        ),
    ];
    if let Some(o) = outcome {
        members.push((
            "outcome".to_owned(),
            Ordered::String(outcome_word(o).to_owned()),
        ));
        if let Outcome::Failed { error } = o {
            members.push(("error".to_owned(), Ordered::String(error.clone())));
        }
    }
    Ordered::Object(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_times() {
        assert_eq!(format_rate(None), "-");
        assert_eq!(format_rate(Some(512.0)), "512B/s");
        assert_eq!(format_rate(Some(4.0 * 1024.0 * 1024.0)), "4.0MiB/s");
        assert_eq!(
            format_rate(Some(1.5 * 1024.0 * 1024.0 * 1024.0)),
            "1.5GiB/s"
        );
        assert_eq!(format_eta(None), "-");
        assert_eq!(format_eta(Some(Duration::from_secs(7))), "7s");
        assert_eq!(format_eta(Some(Duration::from_secs(125))), "2m05s");
        assert_eq!(format_eta(Some(Duration::from_secs(3723))), "1h02m03s");
    }

    #[test]
    fn lines_and_json() {
        let p = Progress {
            current: 1 << 20,
            total: 4 << 20,
            rate: Some(1048576.0),
            eta: Some(Duration::from_secs(3)),
        };
        let running = JobStatus::Running;
        assert_eq!(
            format_line("b", &running, &p, None),
            "b running 1048576/4194304 25.0% 1.0MiB/s eta 3s"
        );
        let failed = Outcome::Failed {
            error: "Input/output error".into(),
        };
        assert_eq!(
            format_line("b", &JobStatus::Concluded, &p, Some(&failed)),
            "b failed 1048576/4194304 25.0% 1.0MiB/s eta - (Input/output error)"
        );
        assert_eq!(
            format_json("b", None, &running, &p, None).to_string(),
            r#"{"id":"b","type":null,"status":"running","current":1048576,"total":4194304,"rate":1048576.0,"eta":3.0}"#
        );
        let done = format_json("b", None, &JobStatus::Concluded, &p, Some(&failed)).to_string();
        assert!(
            done.ends_with(r#""outcome":"failed","error":"Input/output error"}"#),
            "{done}"
        );
    }

    #[test]
    fn tables_are_aligned() {
        let rows = [
            [
                "b".into(),
                "backup".into(),
                "running".into(),
                "1/10".into(),
                String::new(),
            ],
            [
                "mirror0".into(),
                "mirror".into(),
                "ready".into(),
                "10/10".into(),
                String::new(),
            ],
        ];
        assert_eq!(
            format_table(&rows),
            "ID       TYPE    STATUS   PROGRESS  ERROR\n\
             b        backup  running  1/10\n\
             mirror0  mirror  ready    10/10\n"
        );
        assert_eq!(format_table(&[]), "");
    }
}
