//! How commands talk to people (text, progress bars on stderr) and machines (`--json` on stdout).

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON when asked for, else the human text.
    pub fn result<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("serializable"));
        } else {
            println!("{}", text());
        }
    }

    /// Non-fatal warnings go to stderr in both modes.
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    pub fn error(&self, error: &anyhow::Error) {
        // A command that already printed its JSON document (with the failure in it) exits
        // non-zero without a second one.
        if self.json && error.downcast_ref::<AlreadyReported>().is_none() {
            let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
            println!(
                "{}",
                serde_json::json!({ "error": format!("{error:#}"), "causes": chain })
            );
        }
        eprintln!("error: {error:#}");
    }

    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    }
}

/// Byte-count bar template shared by export and build.
pub const BYTES_BAR: &str = "{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})";
/// Step-count bar template.
pub const STEPS_BAR: &str = "{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})";

/// An error whose details are in the JSON document the command printed.
#[derive(Debug)]
pub struct AlreadyReported(pub String);

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AlreadyReported {}
