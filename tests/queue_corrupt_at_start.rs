//! The queue under faults nobody designed for, on the real binaries: its
//! sled database damaged or lost while the gateway was down (every acked
//! line is still delivered, rebuilt from the segment files), a start where
//! the queue cannot be used (refused, the queue left byte for byte as it
//! was, and a normal start then delivers everything), and one flipped byte
//! in a segment file (only the line it is in is lost, counted, shown in
//! status and announced in the drain).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use logdrain_test_intake::Fault;

/// Queues `count` lines of one agent while the vendor answers 500, then
/// stops the gateway cleanly.
async fn queue_undelivered(
    intake: &logdrain_test_intake::Intake,
    data_dir: &Path,
    count: u32,
) -> Gateway {
    intake.inject(Fault::until_cleared(500)).unwrap();
    let mut gateway = Gateway::start(data_dir, &intake.base_url());
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-q", "replica-q")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh(&format!("seq -f 'line %g' 1 {count}"));
    let (_out, err) = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert_drained(&String::from_utf8_lossy(&err.join().unwrap()));
    assert!(gateway.terminate().success());
    gateway
}

fn expected(count: u32) -> Vec<String> {
    (1..=count).map(|i| format!("line {i}")).collect()
}

/// Waits until every one of `expected` reached the intake for the replica.
async fn all_delivered(intake: &logdrain_test_intake::Intake, expected: &[String]) -> bool {
    wait_until(Duration::from_secs(120), || {
        let got = counted(&dd_messages(intake, "replica-q"));
        expected.iter().all(|line| got.contains_key(line))
    })
    .await
}

/// Every file under `dir` with its bytes and mode.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                // An unreadable file is compared by size and mode.
                let bytes = std::fs::read(&path).unwrap_or_else(|_| vec![0; meta.len() as usize]);
                files.insert(path, (bytes, meta.mode()));
            }
        }
    }
    files
}

// ---- Store damage -------------------------------------------------------

/// Damages sled's data file as an operator or a failing disk might.
fn damage_db(queue_dir: &Path, how: &str) {
    use std::os::unix::fs::FileExt;
    let db = queue_dir.join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let file = || std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    match how {
        "half" => file().set_len(len / 2).unwrap(),
        "zero" => file().set_len(0).unwrap(),
        "middle" => file().write_all_at(&vec![0xA5; 4096], len / 2).unwrap(),
        "deleted" => std::fs::remove_file(&db).unwrap(),
        _ => unreachable!(),
    }
}

async fn every_acked_line_is_delivered_after_the_db_is(how: &str) {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = queue_undelivered(&intake, &data_dir, 3000).await;
    damage_db(&data_dir.join("queue"), how);
    intake.clear_faults();
    gateway.restart();

    let delivered = all_delivered(&intake, &expected(3000)).await;
    assert!(delivered, "db {how}: {}", gateway.log());
    let messages = dd_messages(&intake, "replica-q");
    let duplicates = messages.len() - counted(&messages).len();
    let metrics = gateway.metrics().await;
    let rebuilt = metric_value(&metrics, "logdrain_queue_rebuilt_lines_total", &[]);
    assert!(
        duplicates as f64 <= rebuilt,
        "db {how}: {duplicates} duplicates, {rebuilt} counted"
    );
    println!(
        "db {how}: sent 3000, acked 3000, delivered {} unique, lost 0, duplicated {duplicates}, \
         counted as possible duplicates {rebuilt}",
        counted(&messages).len()
    );
    assert!(!gateway.log().contains("deleted segment files"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acked_line_is_delivered_after_the_queue_db_is_truncated_to_half() {
    every_acked_line_is_delivered_after_the_db_is("half").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acked_line_is_delivered_after_the_queue_db_is_truncated_to_zero() {
    every_acked_line_is_delivered_after_the_db_is("zero").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acked_line_is_delivered_after_the_queue_db_is_overwritten_in_the_middle() {
    every_acked_line_is_delivered_after_the_db_is("middle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acked_line_is_delivered_after_the_queue_db_is_deleted() {
    every_acked_line_is_delivered_after_the_db_is("deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_delivered_before_the_db_was_deleted_may_come_again_and_every_duplicate_is_counted() {
    use logdrain_test_intake::{Intake, IntakeConfig, Vendor};
    const NR_KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
    let mut config = IntakeConfig::with_datadog_keys([DD_KEY]);
    config.newrelic.keys = vec![NR_KEY.to_string()];
    let intake = Intake::start(config).await.unwrap();
    // New Relic is down, so every segment stays on disk after Datadog
    // delivered it.
    intake
        .inject(Fault::until_cleared(500).for_vendor(Vendor::NewRelic))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = Gateway::start_with(
        &data_dir,
        &intake.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        vec![("LOGDRAIN_NEWRELIC_URL".into(), intake.base_url())],
    );
    let mut shim = ShimBuilder::new(&gateway.url(), "agent-q", "replica-q")
        .env("DATADOG_TOKEN", DD_KEY)
        .env("NEW_RELIC_LICENSE_KEY", NR_KEY)
        .spawn_sh("seq -f 'line %g' 1 3000");
    let (_out, err) = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    assert_drained(&String::from_utf8_lossy(&err.join().unwrap()));
    let all = expected(3000);
    assert!(all_delivered(&intake, &all).await, "{}", gateway.log());
    assert!(gateway.terminate().success());
    let before = dd_messages(&intake, "replica-q").len();

    damage_db(&data_dir.join("queue"), "deleted");
    intake.clear_faults();
    gateway.restart();
    let nr_messages = || -> Vec<String> {
        intake
            .entries(Vendor::NewRelic)
            .iter()
            .filter(|e| e.value["hostname"] == "replica-q")
            .filter_map(|e| e.value["message"].as_str().map(str::to_string))
            .collect()
    };
    let delivered = wait_until(Duration::from_secs(120), || {
        let got = counted(&nr_messages());
        all.iter().all(|l| got.contains_key(l))
    })
    .await;
    assert!(delivered, "New Relic lost nothing: {}", gateway.log());
    let metrics = gateway.metrics().await;
    let rebuilt = metric_value(&metrics, "logdrain_queue_rebuilt_lines_total", &[]);
    // Datadog's cursor went with the db: what it gets again is counted.
    let again = wait_until(Duration::from_secs(120), || {
        dd_messages(&intake, "replica-q").len() - before == rebuilt as usize
    })
    .await;
    let dd = dd_messages(&intake, "replica-q");
    assert!(again, "{} again, {rebuilt} counted", dd.len() - before);
    assert_eq!(counted(&dd).len(), 3000, "Datadog lost nothing");
    println!(
        "db deleted after Datadog delivered: sent 3000, acked 3000, Datadog delivered 3000 \
         unique and {} again, New Relic 3000, lost 0, counted as possible duplicates {rebuilt}",
        dd.len() - before
    );
}

// ---- Store unavailable --------------------------------------------------

/// Runs `logdrain-gateway serve` on `data_dir` through `sh -c <wrapper>`
/// (which ends with `exec "$0" serve`) until it exits; returns whether it
/// succeeded and its stderr.
fn start_refused(data_dir: &Path, intake_url: &str, wrapper: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(wrapper)
        .arg(bin("logdrain-gateway"))
        .arg(data_dir)
        .env("LOGDRAIN_DATA_DIR", data_dir)
        .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
        .env("LOGDRAIN_GRPC_LISTEN", "127.0.0.1:0")
        .env("LOGDRAIN_HTTP_LISTEN", "127.0.0.1:0")
        .env("LOGDRAIN_DATADOG_URL", intake_url)
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Refused start: non-zero exit, a message naming `errno` and `fix`, the
/// queue byte for byte as before; then a normal start delivers everything.
async fn a_start_is_refused_and_moves_nothing(
    wrapper: &str,
    errno: &str,
    fix: &str,
    prepare: impl FnOnce(&Path),
    undo: impl FnOnce(&Path),
) {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = queue_undelivered(&intake, &data_dir, 1000).await;
    let queue_dir = data_dir.join("queue");
    prepare(&queue_dir);
    let before = snapshot(&data_dir);

    let (ok, stderr) = start_refused(&data_dir, &intake.base_url(), wrapper);
    assert!(!ok, "the start must be refused: {stderr}");
    assert!(stderr.contains(errno), "names {errno}: {stderr}");
    assert!(stderr.contains(fix), "names the fix: {stderr}");
    assert!(stderr.contains("the start is refused"), "{stderr}");
    assert_eq!(snapshot(&data_dir), before, "not a byte moved: {stderr}");
    println!(
        "refused with: {}",
        stderr.lines().last().unwrap_or_default()
    );

    undo(&queue_dir);
    intake.clear_faults();
    gateway.restart();
    let delivered = all_delivered(&intake, &expected(1000)).await;
    assert!(delivered, "{}", gateway.log());
    let messages = dd_messages(&intake, "replica-q");
    println!(
        "{errno}: sent 1000, acked 1000, refused, then delivered {} unique, lost 0, duplicated {}",
        counted(&messages).len(),
        messages.len() - counted(&messages).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_with_too_few_file_descriptors_is_refused_and_moves_nothing() {
    a_start_is_refused_and_moves_nothing(
        "ulimit -n 12 && exec \"$0\" serve",
        "EMFILE",
        "raise the open-file limit",
        |_| {},
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_on_a_read_only_mount_is_refused_and_moves_nothing() {
    let probe = Command::new("unshare")
        .args([
            "-Urm",
            "sh",
            "-c",
            "mount --bind / /mnt 2>/dev/null || mount -t tmpfs none /mnt",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("skipped: this machine cannot create user and mount namespaces");
        return;
    }
    // A read-only bind mount of the data dir, in a namespace of its own.
    a_start_is_refused_and_moves_nothing(
        "exec unshare -Urm sh -c 'mount --bind \"$2\" \"$2\" && mount -o remount,ro,bind \"$2\" \"$2\" && exec \"$1\" serve' sh \"$0\" \"$1\"",
        "EROFS",
        "mount it read-write",
        |_| {},
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_with_an_unreadable_queue_db_is_refused_and_moves_nothing() {
    // Root reads any file: then the gateway runs as nobody, on files nobody
    // owns, to meet the permission check.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let wrapper = if root {
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" serve"
    } else {
        "exec \"$0\" serve"
    };
    let chown = |path: &Path, uid: u32| {
        let status = Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    };
    a_start_is_refused_and_moves_nothing(
        wrapper,
        "EACCES",
        "give the gateway's user read and write access",
        |queue| {
            if root {
                let top = queue.parent().unwrap().parent().unwrap();
                chown(top, 65534);
            }
            std::fs::set_permissions(queue.join("db"), std::fs::Permissions::from_mode(0o000))
                .unwrap();
        },
        |queue| {
            std::fs::set_permissions(queue.join("db"), std::fs::Permissions::from_mode(0o644))
                .unwrap();
            if root {
                let top = queue.parent().unwrap().parent().unwrap();
                chown(top, 0);
            }
        },
    )
    .await;
}

// ---- Segment damage -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_a_segment_file_loses_only_its_line_counted_shown_and_announced() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = queue_undelivered(&intake, &data_dir, 1000).await;

    // Flip one byte inside the text of "line 500" in its segment file (a
    // line's data is stored as is; "line 5000" does not exist).
    let lines_dir = data_dir.join("queue").join("lines");
    let mut flipped = 0;
    for entry in std::fs::read_dir(&lines_dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(8).position(|w| w == b"line 500") {
            bytes[at + 2] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "line 500 is in one segment file");
    intake.clear_faults();
    gateway.restart();

    let mut others = expected(1000);
    others.retain(|l| l != "line 500");
    let notice = || {
        dd_messages(&intake, "logdrain-gateway")
            .into_iter()
            .find(|m| m.contains("damaged on the gateway's disk"))
    };
    let delivered = wait_until(Duration::from_secs(120), || {
        let got = counted(&dd_messages(&intake, "replica-q"));
        others.iter().all(|l| got.contains_key(l)) && notice().is_some()
    })
    .await;
    assert!(delivered, "{}", gateway.log());
    let messages = dd_messages(&intake, "replica-q");
    assert!(!messages.contains(&"line 500".to_string()));
    assert_eq!(
        counted(&messages).len(),
        999,
        "only the touched line is lost"
    );
    let notice = notice().unwrap_or_default();
    assert!(notice.contains("dropped 1 lines"), "{notice}");
    assert!(notice.contains("agent agent-q"), "{notice}");

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "logdrain_dropped_lines_total",
            &[("agent", "agent-q"), ("reason", "damaged")]
        ),
        1.0,
        "{metrics}"
    );
    let status = agent_status(&gateway, "agent-q").await;
    let destination = &status["agents"][0]["destinations"][0];
    assert_eq!(destination["dropped_lines"], 1, "{status}");
    assert_eq!(destination["health"], "failing", "{status}");
    println!("segment damage: sent 1000, acked 1000, delivered 999, lost 1 (counted 1), notice: {notice}");
}

// ---- Recover ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_whose_sled_cannot_open_is_refused_and_recover_brings_every_line_back() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gw");
    let mut gateway = queue_undelivered(&intake, &data_dir, 1000).await;
    // Garbage over sled's config: sled says "unsupported", not "corrupt".
    std::fs::write(data_dir.join("queue").join("conf"), vec![0xA5; 4096]).unwrap();
    let before = snapshot(&data_dir);
    let (ok, stderr) = start_refused(&data_dir, &intake.base_url(), "exec \"$0\" serve");
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("logdrain-gateway recover"),
        "names the fix: {stderr}"
    );
    assert_eq!(snapshot(&data_dir), before, "not a byte moved");

    let out = Command::new(bin("logdrain-gateway"))
        .arg("recover")
        .env("LOGDRAIN_DATA_DIR", &data_dir)
        .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
        .output()
        .expect("run recover");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("1000 lines"), "{said}");

    intake.clear_faults();
    gateway.restart();
    let delivered = all_delivered(&intake, &expected(1000)).await;
    assert!(delivered, "{}", gateway.log());
    println!("recover: {}", said.trim());
}
