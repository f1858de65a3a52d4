//! An app that depends on `exactly` compiles only what it uses: no test kit, CLI tools or
//! sinks unless it asks for them by feature, and no crash-injection points outside tests.
//! Checked with `cargo tree` on this workspace's lock file (offline, no build).

use std::collections::BTreeSet;
use std::process::Command;

/// The packages (`name`) in `cargo tree -e <edges> <args>`.
fn tree(edges: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--prefix",
            "none",
            "-e",
            edges,
        ])
        .args(["--format", "{p}"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The packages an app depending on `exactly` with `features` builds and links.
fn facade_with(features: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["-p", "exactly", "--no-default-features"];
    let list = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", &list]);
    }
    tree("normal", &args)
}

/// Test and tool crates no app needs at run time, whatever its features.
const NEVER: [&str; 5] = [
    "exactly-testkit",
    "exactly-cli",
    "tempfile",
    "indicatif",
    "criterion",
];

fn assert_absent(packages: &BTreeSet<String>, absent: &[&str], build: &str) {
    let found: Vec<&&str> = absent.iter().filter(|p| packages.contains(**p)).collect();
    assert!(
        found.is_empty(),
        "{build} depends on {found:?} (`cargo tree -e normal -i <name>` says through what)"
    );
}

#[test]
fn the_default_facade_has_no_test_kit_tools_or_sinks() {
    let packages = tree("normal", &["-p", "exactly"]);
    assert!(packages.contains("exactly-kafka") && packages.contains("rocksdb"));
    assert_absent(&packages, &NEVER, "exactly (default features)");
    assert_absent(
        &packages,
        // (`rand` comes with the PostgreSQL client, so only with feature `postgres`.)
        &[
            "tokio-postgres",
            "deadpool-postgres",
            "redis",
            "clap",
            "rand",
        ],
        "exactly (default features)",
    );
    // `logging` is the one default feature.
    assert!(packages.contains("tracing-subscriber"));
}

#[test]
fn each_feature_adds_only_its_own_dependencies() {
    let bare = facade_with(&[]);
    assert_absent(
        &bare,
        &["tracing-subscriber", "clap", "tokio-postgres", "redis"],
        "exactly without features",
    );
    for (feature, adds, not) in [
        ("logging", "tracing-subscriber", "clap"),
        ("cli", "clap", "tokio-postgres"),
        ("postgres", "tokio-postgres", "redis"),
        ("redis", "redis", "tokio-postgres"),
    ] {
        let with = facade_with(&[feature]);
        assert!(
            with.contains(adds),
            "feature {feature} does not bring {adds}"
        );
        assert!(
            !with.contains(not),
            "feature {feature} brings {not}, which belongs to another feature"
        );
        assert_absent(&with, &NEVER, &format!("exactly with feature {feature}"));
    }
    assert_absent(
        &facade_with(&["logging", "cli", "postgres", "redis"]),
        &NEVER,
        "exactly with every feature",
    );
    // `testkit` is for an app's dev-dependencies (`App::test_driver`): it brings the test kit
    // without its broker and service helpers, and nothing of the other features.
    let testkit = facade_with(&["testkit"]);
    assert!(
        testkit.contains("exactly-testkit"),
        "feature testkit does not bring exactly-testkit"
    );
    assert_absent(
        &testkit,
        &[
            "exactly-cli",
            "tempfile",
            "indicatif",
            "criterion",
            "clap",
            "tokio-postgres",
            "redis",
            "shlex",
        ],
        "exactly with feature testkit",
    );
    assert!(!bare.contains("exactly-testkit"));
}

#[test]
fn crash_points_compile_only_into_test_builds() {
    let features = |package: &str, edges: &str| -> bool {
        let out = Command::new(env!("CARGO"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(["tree", "--offline", "--locked", "--prefix", "none"])
            .args(["-e", edges, "-p", package])
            .output()
            .expect("run cargo tree");
        assert!(out.status.success(), "cargo tree -p {package} failed");
        String::from_utf8_lossy(&out.stdout).contains("exactly-kafka feature \"failpoints\"")
    };
    // The binaries users build: the CLI and the facade.
    assert!(!features("exactly", "normal,features"));
    assert!(!features("exactly-cli", "normal,features"));
    // The examples' tests crash the example binaries on purpose.
    assert!(features("exactly-examples", "normal,dev,features"));
}
