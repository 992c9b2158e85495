//! The Kubernetes manifests in `deploy/kubernetes/` are checked without a
//! cluster:
//! - every core object validates strictly (no unknown field) against the
//!   Kubernetes schemas of a current release and of the oldest one the docs
//!   name, with PyPI `kubernetes-validate` (it bundles the schemas: no
//!   network);
//! - the ServiceMonitor and PrometheusRule have the shape the
//!   prometheus-operator CRDs require;
//! - the PrometheusRule is generated from `deploy/prometheus/alerts.yml`, its
//!   groups equal that file's, and promtool accepts them;
//! - selectors, ports, volumes, variable names, the termination grace period
//!   and image tags agree with each other and with the binaries.
//!
//! The checks run in `tests/kubernetes/check.py` with the Python that has
//! `kubernetes-validate`. It is looked for in `LOGDRAIN_TEST_KUBERNETES_VALIDATE`
//! (the `kubernetes-validate` executable; `tests/run.sh` sets it to the one
//! in `.venv`), then `.venv/bin/kubernetes-validate`, then `PATH`. Without
//! it these tests say so on one line and pass, unless
//! `LOGDRAIN_TEST_REQUIRE_ALL=1` (set by `tests/run.sh`), where they fail.
//!
//! After changing `alerts.yml`, regenerate the PrometheusRule with
//! `LOGDRAIN_UPDATE_MANIFESTS=1 cargo test --test kubernetes`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/monitoring/prometheusrule.yaml";
const MANIFESTS: &str = "deploy/kubernetes";
const CHECK: &str = "tests/kubernetes/check.py";
const VALIDATE_ENV: &str = "LOGDRAIN_TEST_KUBERNETES_VALIDATE";
const REQUIRE_ALL_ENV: &str = "LOGDRAIN_TEST_REQUIRE_ALL";
const UPDATE_ENV: &str = "LOGDRAIN_UPDATE_MANIFESTS";
const INSTALL_HINT: &str =
    "python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt";
/// The oldest release docs/kubernetes.md supports, and the newest whose
/// schemas kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.32", "1.37"];

const PROMETHEUS_RULE_HEAD: &str = "\
# Generated from deploy/prometheus/alerts.yml by tests/kubernetes.rs: do not
# edit. After changing alerts.yml, run
#   LOGDRAIN_UPDATE_MANIFESTS=1 cargo test --test kubernetes
# Needs the prometheus-operator CRDs. Prometheus picks PrometheusRules by its
# ruleSelector: add the label it wants (kube-prometheus-stack: release: <its
# release name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: logdrain-gateway
  namespace: logdrain
  labels:
    app.kubernetes.io/name: logdrain-gateway
    app.kubernetes.io/part-of: logdrain
spec:
";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The PrometheusRule manifest for the rule file `alerts`: its `groups:`
/// block, indented under `spec:`.
fn prometheus_rule_from(alerts: &str) -> String {
    let start = alerts
        .lines()
        .position(|line| line.starts_with("groups:"))
        .unwrap_or_else(|| panic!("{ALERTS} has no top-level `groups:` line"));
    let mut text = PROMETHEUS_RULE_HEAD.to_string();
    for line in alerts.lines().skip(start) {
        if !line.is_empty() {
            text.push_str("  ");
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

#[test]
fn the_prometheus_rule_is_generated_from_alerts_yml() {
    let alerts = std::fs::read_to_string(root().join(ALERTS)).expect("read the alert rules");
    let want = prometheus_rule_from(&alerts);
    let path = root().join(PROMETHEUS_RULE);
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write the PrometheusRule");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{PROMETHEUS_RULE} is not what {ALERTS} makes; regenerate it: \
         {UPDATE_ENV}=1 cargo test --test kubernetes"
    );
}

/// The Python that runs `kubernetes-validate`: the one its script names.
struct Checker {
    python: PathBuf,
}

impl Checker {
    /// Finds kubernetes-validate, or says on one line that the test is
    /// skipped (a failure under LOGDRAIN_TEST_REQUIRE_ALL=1).
    fn find(test: &str) -> Option<Checker> {
        let found = match std::env::var_os(VALIDATE_ENV) {
            Some(path) => {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "{VALIDATE_ENV}={} does not exist; install it with: {INSTALL_HINT}",
                    path.display()
                );
                Some(path)
            }
            None => std::iter::once(root().join(".venv/bin"))
                .chain(
                    std::env::var_os("PATH")
                        .iter()
                        .flat_map(std::env::split_paths),
                )
                .map(|dir| dir.join("kubernetes-validate"))
                .find(|path| path.is_file()),
        };
        let Some(script) = found else {
            let require_all = std::env::var_os(REQUIRE_ALL_ENV).is_some_and(|v| v == "1");
            assert!(
                !require_all,
                "kubernetes-validate is not installed ({REQUIRE_ALL_ENV}=1); install it with: \
                 {INSTALL_HINT}, or point {VALIDATE_ENV} at it"
            );
            eprintln!(
                "SKIPPED {test}: kubernetes-validate is not installed; install it with: \
                 {INSTALL_HINT}"
            );
            return None;
        };
        Some(Checker {
            python: python_of(&script),
        })
    }

    /// Runs `check.py ARGS` on `manifests` (deploy/kubernetes when None).
    fn run(&self, args: &[&str], manifests: Option<&Path>) -> Output {
        let mut command = Command::new(&self.python);
        command
            .arg(root().join(CHECK))
            .args(args)
            .current_dir(root());
        if let Some(dir) = manifests {
            command.env("CHECK_MANIFESTS_DIR", dir);
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()))
    }

    /// Runs a check on deploy/kubernetes and fails with what it printed.
    fn passes(&self, args: &[&str]) {
        let output = self.run(args, None);
        assert!(output.status.success(), "{}", text(&output));
    }
}

/// The interpreter on a pip-installed script's `#!` line.
fn python_of(script: &Path) -> PathBuf {
    let content = std::fs::read_to_string(script)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    let shebang = content
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .unwrap_or_else(|| panic!("{} has no #! line naming its Python", script.display()));
    let mut words = shebang.split_whitespace();
    match words.next() {
        Some(env) if env.ends_with("/env") => PathBuf::from(words.next().unwrap_or("python3")),
        Some(python) => PathBuf::from(python),
        None => panic!("{} has an empty #! line", script.display()),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A copy of deploy/kubernetes in a temporary directory with `from` replaced
/// by `to` in `file`, to show a check fails on it.
fn broken_copy(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let copy = dir.path().join(MANIFESTS);
    copy_dir(&root().join(MANIFESTS), &copy);
    let path = copy.join(file);
    let content = std::fs::read_to_string(&path).expect("read the copied manifest");
    assert!(content.contains(from), "{file} has no {from:?} to break");
    std::fs::write(&path, content.replacen(from, to, 1)).expect("write the broken manifest");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("list the manifests") {
        let entry = entry.expect("read a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a manifest");
        }
    }
}

/// Runs a check on a broken copy and returns what it printed; fails if the
/// check passed.
fn fails_on(checker: &Checker, args: &[&str], broken: &tempfile::TempDir) -> String {
    let output = checker.run(args, Some(&broken.path().join(MANIFESTS)));
    assert!(
        !output.status.success(),
        "the check passed a broken manifest:\n{}",
        text(&output)
    );
    text(&output)
}

#[test]
fn every_object_validates_strictly_against_the_kubernetes_schemas() {
    let Some(checker) = Checker::find("every_object_validates_strictly") else {
        return;
    };
    let mut args = vec!["schemas"];
    args.extend_from_slice(KUBERNETES_VERSIONS);
    checker.passes(&args);

    // A misspelt field is refused, not ignored.
    let broken = broken_copy(
        "20-statefulset.yaml",
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
    );
    let out = fails_on(&checker, &args, &broken);
    assert!(out.contains("terminationGracePeriodSecond"), "{out}");
    // So is a kind the schemas do not know.
    let broken = broken_copy("30-poddisruptionbudget.yaml", "policy/v1", "policy/v2");
    let out = fails_on(&checker, &args, &broken);
    assert!(out.contains("PodDisruptionBudget"), "{out}");
}

#[test]
fn the_servicemonitor_and_prometheusrule_have_the_shape_their_crds_require() {
    let Some(checker) = Checker::find("crds") else {
        return;
    };
    checker.passes(&["crds"]);

    let broken = broken_copy(
        "monitoring/servicemonitor.yaml",
        "  selector:\n    matchLabels:\n      logdrain.dev/service: headless\n",
        "",
    );
    let out = fails_on(&checker, &["crds"], &broken);
    assert!(out.contains("'selector' is a required property"), "{out}");
    let broken = broken_copy(
        "monitoring/prometheusrule.yaml",
        "        for: 10m",
        "        for: ten minutes",
    );
    let out = fails_on(&checker, &["crds"], &broken);
    assert!(out.contains("ten minutes"), "{out}");
}

#[test]
fn the_prometheus_rules_groups_equal_alerts_yml_and_pass_promtool() {
    let Some(checker) = Checker::find("prometheus_rule") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let rules = dir.path().join("rules.yml");
    let rules_arg = rules.to_str().expect("a UTF-8 temporary path");
    checker.passes(&["rules", rules_arg]);
    let output = match Command::new("promtool")
        .args(["check", "rules", rules_arg])
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; it comes with Debian's prometheus package: \
             `apt-get install -y --no-install-recommends prometheus` (tests/run.sh does this)"
        ),
        Err(err) => panic!("cannot run promtool: {err}"),
    };
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("SUCCESS"), "{}", text(&output));

    let broken = broken_copy(
        "monitoring/prometheusrule.yaml",
        "logdrain_route_blocked{reason=\"credentials_rejected\"}",
        "logdrain_route_blocked{reason=\"credentials_refused\"}",
    );
    let out = fails_on(&checker, &["rules", rules_arg], &broken);
    assert!(
        out.contains("differ from deploy/prometheus/alerts.yml"),
        "{out}"
    );
}

#[test]
fn services_probes_and_selectors_point_at_what_exists() {
    let Some(checker) = Checker::find("wiring") else {
        return;
    };
    checker.passes(&["wiring"]);

    let broken = broken_copy("10-services.yaml", "targetPort: grpc", "targetPort: gprc");
    let out = fails_on(&checker, &["wiring"], &broken);
    assert!(out.contains("'gprc'"), "{out}");
    let broken = broken_copy(
        "monitoring/servicemonitor.yaml",
        "logdrain.dev/service: headless",
        "app.kubernetes.io/name: logdrain-gateway",
    );
    let out = fails_on(&checker, &["wiring"], &broken);
    assert!(out.contains("matches 2 Services"), "{out}");
}

#[test]
fn every_logdrain_variable_set_is_one_its_binary_accepts() {
    let Some(checker) = Checker::find("variables") else {
        return;
    };
    let gateway = common::bin("logdrain-gateway");
    let shim = common::bin("agent-shim");
    let args = [
        "env",
        gateway.to_str().expect("a UTF-8 path"),
        shim.to_str().expect("a UTF-8 path"),
    ];
    checker.passes(&args);

    let broken = broken_copy(
        "20-statefulset.yaml",
        "LOGDRAIN_MAX_STREAMS",
        "LOGDRAIN_MAX_STREAM",
    );
    let out = fails_on(&checker, &args, &broken);
    assert!(
        out.contains("LOGDRAIN_MAX_STREAM is not a variable"),
        "{out}"
    );
}

#[test]
fn the_termination_grace_period_covers_the_gateways_shutdown() {
    let Some(checker) = Checker::find("grace") else {
        return;
    };
    checker.passes(&["grace"]);

    let broken = broken_copy("20-statefulset.yaml", "value: 10s", "value: 20s");
    let out = fails_on(&checker, &["grace"], &broken);
    assert!(out.contains("at least 66"), "{out}");
}

#[test]
fn the_images_are_tagged_with_the_workspace_version() {
    let Some(checker) = Checker::find("images") else {
        return;
    };
    checker.passes(&["images", env!("CARGO_PKG_VERSION")]);
}
