//! The reference in `docs/reference/` cannot drift from the binaries.
//!
//! The sections between `<!-- generated: KEY -->` and `<!-- end generated -->`
//! are made here: `BINARY [SUBCOMMAND] --help` is that command's real help
//! (environment cleared, 100 columns), and `metrics` is the table of every
//! metric the gateway describes, with its type, labels and HELP text. A
//! section that differs fails the test with a diff; to update them, run
//! [`UPDATE`]. The hand-written text around the sections is left alone.
//!
//! It also checks, loosely, that every `--flag` named in README.md and
//! docs/ is one some binary's help knows (or one of a few other tools').

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// The one command that brings the generated sections up to date.
const UPDATE: &str = "cargo build --bins && LOGDRAIN_BLESS=1 cargo test --test reference";

const BEGIN: &str = "<!-- generated: ";
const END: &str = "<!-- end generated -->";

/// Help is wrapped at this width, whatever the terminal.
const COLUMNS: &str = "100";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The newest modification time of the files under `dir`, but those under
/// `dir/skip`.
fn newest(dir: &Path, skip: &str) -> std::time::SystemTime {
    let mut latest = std::time::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let time = if entry.file_name() == skip {
            continue;
        } else if path.is_dir() {
            newest(&path, "")
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap()
        };
        latest = latest.max(time);
    }
    latest
}

/// The binary `name`, refused when its sources changed after it was built
/// (`cargo test --test reference` alone does not rebuild other packages'
/// binaries).
fn fresh_bin(name: &str) -> PathBuf {
    let bin = common::bin(name);
    let (package, skip) = match name {
        "agent-shim" => ("agent-shim/src", ""),
        // The gateway is its library and main.rs; src/bin/ holds the others.
        "logdrain-gateway" => ("server/src", "bin"),
        _ => ("server/src", ""),
    };
    let built = std::fs::metadata(&bin).unwrap().modified().unwrap();
    for (dir, skip) in [(package, skip), ("proto", "")] {
        assert!(
            built >= newest(&root().join(dir), skip),
            "{} is older than the sources in {dir}/; build it first: {UPDATE}",
            bin.display()
        );
    }
    bin
}

/// `args` ends in `--help`: the first is the binary, the rest its arguments.
fn help(args: &[&str]) -> String {
    let out = Command::new(fresh_bin(args[0]))
        .args(&args[1..])
        // Nothing of this machine's environment: clap shows set variables'
        // values as `[env: NAME=value]`.
        .env_clear()
        .env("COLUMNS", COLUMNS)
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    // Trailing spaces (clap's blank lines between paragraphs) are noise.
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    format!("```text\n{}\n```\n", lines.join("\n").trim_end())
}

/// The subcommands `logdrain-gateway --help` lists.
fn gateway_subcommands() -> Vec<String> {
    let text = help(&["logdrain-gateway", "--help"]);
    let mut commands = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "Commands:" {
            inside = true;
        } else if inside && line.is_empty() {
            break;
        } else if inside && line.starts_with("  ") && !line.starts_with("   ") {
            let name = line.split_whitespace().next().unwrap();
            if name != "help" {
                commands.push(name.to_string());
            }
        }
    }
    assert!(!commands.is_empty(), "no Commands: in\n{text}");
    commands
}

/// Every generated section: (file under docs/reference/, key).
fn sections() -> Vec<(&'static str, String)> {
    let mut sections = vec![("agent-shim.md", "agent-shim --help".to_string())];
    sections.push(("logdrain-gateway.md", "logdrain-gateway --help".to_string()));
    for command in gateway_subcommands() {
        sections.push((
            "logdrain-gateway.md",
            format!("logdrain-gateway {command} --help"),
        ));
    }
    sections.push(("logdrain-gateway.md", "logdrain-loadgen --help".to_string()));
    sections.push(("metrics.md", "metrics".to_string()));
    sections
}

fn generate(key: &str) -> String {
    if key == "metrics" {
        metrics_table(&catalogue())
    } else {
        help(&key.split(' ').collect::<Vec<_>>())
    }
}

/// One metric as the gateway describes and registers it.
#[derive(Debug, Default)]
struct Metric {
    kind: &'static str,
    help: String,
    registered_as: BTreeSet<&'static str>,
    labels: BTreeSet<String>,
}

/// Records what the gateway's metrics module describes and registers.
#[derive(Default)]
struct Capture {
    /// In the order described.
    described: Mutex<Vec<String>>,
    metrics: Mutex<BTreeMap<String, Metric>>,
}

impl Capture {
    fn describe(&self, kind: &'static str, name: KeyName, help: SharedString) {
        let name = name.as_str().to_string();
        self.described.lock().unwrap().push(name.clone());
        let mut metrics = self.metrics.lock().unwrap();
        let metric = metrics.entry(name).or_default();
        metric.kind = kind;
        metric.help = help.to_string();
    }

    fn register(&self, kind: &'static str, key: &Key) {
        let mut metrics = self.metrics.lock().unwrap();
        let metric = metrics.entry(key.name().to_string()).or_default();
        metric.registered_as.insert(kind);
        metric
            .labels
            .extend(key.labels().map(|l| l.key().to_string()));
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.describe("counter", key, help);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.describe("gauge", key, help);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.describe("histogram", key, help);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.register("counter", key);
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.register("gauge", key);
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.register("histogram", key);
        Histogram::noop()
    }
}

/// Every metric, in the order the gateway describes them, then any it
/// registers without a description (which the checks refuse).
fn catalogue() -> Vec<(String, Metric)> {
    use logdrain_gateway::metrics as m;
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || {
        m::describe();
        // Each function that records a metric, once, so its labels are
        // known. A metric added without a call here fails the checks below.
        let ingest = m::Ingest::new("a");
        ingest.received(1, 1);
        ingest.acked(1, 1, true);
        ingest.skipped_seqs(1);
        ingest.no_destination(1);
        let queued = m::Queued::new("a");
        queued.pushed(1, 1);
        queued.popped(1, 1);
        queued.depth(1, 1);
        m::queue_oldest_line_ages([("a", "datadog", None)], std::time::SystemTime::now());
        let delivery = m::Delivery::new("a", "datadog");
        delivery.delivered(1);
        delivery.retried(1);
        delivery.rejected(1);
        delivery.latency(std::time::Duration::ZERO);
        m::failed("a", "datadog", "retryable", 1);
        m::restamped(
            "datadog",
            logdrain_gateway::sinks::engine::late::Reason::TooOld,
            1,
        );
        m::dropped("a", m::Dropped::Quota, 1);
        m::route_state(
            "a",
            "datadog",
            logdrain_gateway::sinks::engine::RouteState::Retrying,
            false,
        );
        m::active_streams(0.0);
        m::connected_replicas("a", 0.0);
        m::refused_streams(m::StreamRefused::NoOpen);
        m::queue_rebuilt_lines(0);
        m::queue_disk_full(false);
        m::refused_batches("a", m::BatchRefused::DiskFull);
        m::http_refused(m::HttpRefused::TooLarge);
        m::queue_set_aside();
    });
    let order = capture.described.into_inner().unwrap();
    let mut metrics = capture.metrics.into_inner().unwrap();
    let mut listed: Vec<(String, Metric)> = order
        .iter()
        .filter_map(|name| metrics.remove_entry(name))
        .collect();
    listed.extend(metrics);
    listed
}

fn metrics_table(metrics: &[(String, Metric)]) -> String {
    let mut table = String::from("| name | type | labels | HELP |\n|---|---|---|---|\n");
    for (name, metric) in metrics {
        let mut labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
        if labels.is_empty() {
            labels.push("none".to_string());
        }
        writeln!(
            table,
            "| `{name}` | {} | {} | {} |",
            metric.kind,
            labels.join(", "),
            metric.help.replace('|', "\\|")
        )
        .unwrap();
    }
    table
}

/// The sections of `text`: key → (start, end) byte range of the body.
fn find_sections(file: &str, text: &str) -> BTreeMap<String, (usize, usize)> {
    let mut found = BTreeMap::new();
    let mut at = 0;
    while let Some(start) = text[at..].find(BEGIN).map(|i| at + i) {
        let key_end = start + text[start..].find(" -->").expect("a closed marker");
        let key = text[start + BEGIN.len()..key_end].to_string();
        let body = key_end + " -->\n".len();
        let end = body
            + text[body..]
                .find(END)
                .unwrap_or_else(|| panic!("{file}: `{key}` has no `{END}`"));
        assert!(
            found.insert(key.clone(), (body, end)).is_none(),
            "{file}: `{key}` appears twice"
        );
        at = end;
    }
    found
}

/// A line diff of `old` against `new` (`-` old, `+` new, two lines of
/// context), from their longest common subsequence.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|(op, _)| *op != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            writeln!(out, "{op} {line}").unwrap();
        } else {
            skipped = true;
        }
    }
    out
}

#[test]
fn the_reference_matches_the_binaries_help_and_the_metrics_help() {
    let bless = std::env::var_os("LOGDRAIN_BLESS").is_some_and(|v| v == "1");
    let dir = root().join("docs/reference");
    let mut by_file: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (file, key) in sections() {
        by_file.entry(file).or_default().push(key);
    }
    let mut problems = String::new();
    for (file, keys) in by_file {
        let path = dir.join(file);
        let mut text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let found = find_sections(file, &text);
        for key in found.keys() {
            if !keys.contains(key) {
                writeln!(
                    problems,
                    "docs/reference/{file}: `{key}` is no longer generated; remove its section\n"
                )
                .unwrap();
            }
        }
        // Replaced from the end, so the earlier ranges stay valid.
        let mut replacements = Vec::new();
        for key in &keys {
            let want = generate(key);
            match found.get(key) {
                Some(&(start, end)) if text[start..end] != want => {
                    writeln!(
                        problems,
                        "docs/reference/{file}: `{key}` differs (- committed, + generated):\n{}",
                        diff(&text[start..end], &want)
                    )
                    .unwrap();
                    replacements.push((start, end, want));
                }
                Some(_) => {}
                None => {
                    writeln!(
                        problems,
                        "docs/reference/{file}: no section for `{key}`; the update adds one at the end\n"
                    )
                    .unwrap();
                    let at = text.len();
                    let section = format!("\n## `{key}`\n\n{BEGIN}{key} -->\n{want}{END}\n");
                    replacements.push((at, at, section));
                }
            }
        }
        if bless && !replacements.is_empty() {
            replacements.sort_by_key(|r| std::cmp::Reverse(r.0));
            for (start, end, want) in replacements {
                text.replace_range(start..end, &want);
            }
            std::fs::write(&path, text).unwrap();
        }
    }
    if bless {
        eprintln!("{problems}Updated.");
        return;
    }
    assert!(
        problems.is_empty(),
        "{problems}The reference is generated from the binaries. Update it with:\n    {UPDATE}"
    );
}

#[test]
fn every_metric_has_help_text_and_known_labels() {
    let mut problems = Vec::new();
    for (name, metric) in catalogue() {
        if metric.help.trim().is_empty() {
            problems.push(format!(
                "{name} has no HELP text: describe it in server/src/metrics.rs"
            ));
        }
        if metric.registered_as.is_empty() {
            problems.push(format!(
                "{name} is described but no call in tests/reference.rs records it, so its labels are unknown: add one to `catalogue`"
            ));
        }
        if metric.registered_as.iter().any(|kind| *kind != metric.kind) {
            problems.push(format!(
                "{name} is described as a {} but recorded as {:?}",
                metric.kind, metric.registered_as
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Flags of tools other than ours that the docs show in commands.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    // cargo and the test harness
    "--bench",
    "--bins",
    "--ignored",
    "--lib",
    "--nocapture",
    "--release",
    "--test",
    "--test-threads",
    "--workspace",
    "--all",
    "--all-targets",
    // docker compose, docker build, curl, perf
    "--build",
    "--cacert",
    "--from",
    "--sort",
    "--target",
    // the test intake (--count-only) and benches/spread.sh
    "--count-only",
    "--gateways",
    "--shims",
    // kubectl
    "--for",
    "--from-literal",
    "--replicas",
    // the example agent's own arguments in docs/kubernetes.md
    "--its",
];

/// `--flag` tokens in `text`.
fn flags(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = text[at..].find("--").map(|i| at + i) {
        let start = i + 2;
        let before_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'-')
        {
            end += 1;
        }
        if before_ok && end > start && bytes[start].is_ascii_lowercase() {
            found.insert(text[i..end].trim_end_matches('-').to_string());
        }
        at = end.max(i + 2);
    }
    found
}

fn markdown_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "md") {
            into.push(path);
        }
    }
}

#[test]
fn every_flag_the_docs_name_is_one_a_binary_knows() {
    let mut known: BTreeSet<String> = OTHER_TOOLS_FLAGS.iter().map(|f| f.to_string()).collect();
    for (_, key) in sections() {
        if key != "metrics" {
            known.extend(flags(&generate(&key)));
        }
    }
    // The whole-pipeline benchmark script's own options.
    let script = Command::new("bash")
        .arg(root().join("benches/run-pipeline.sh"))
        .arg("--help")
        .output()
        .expect("run benches/run-pipeline.sh --help");
    known.extend(flags(&String::from_utf8_lossy(&script.stdout)));

    let mut files = vec![root().join("README.md")];
    for extra in ["CONTRIBUTING.md"] {
        if root().join(extra).exists() {
            files.push(root().join(extra));
        }
    }
    markdown_files(&root().join("docs"), &mut files);
    let mut unknown = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for flag in flags(&text).difference(&known) {
            unknown.push(format!(
                "{}: {flag}",
                file.strip_prefix(root()).unwrap().display()
            ));
        }
    }
    assert!(
        unknown.is_empty(),
        "these flags are in the docs but in no binary's --help (renamed or removed?):\n{}\n\
         If one belongs to another tool, add it to OTHER_TOOLS_FLAGS in tests/reference.rs.",
        unknown.join("\n")
    );
}
