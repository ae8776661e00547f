//! What a test does when a dependency that `scripts/setup.sh` installs is missing.

/// Called when a dependency that `scripts/setup.sh` installs (Fashion-MNIST,
/// chromium) is missing. Under CI (the `CI` environment variable set, and not
/// to "false" or "0") that is a broken install and fails the test; elsewhere
/// the test says what is missing and skips.
pub fn missing_dependency(what: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    assert!(!ci, "{what}, and CI is set: scripts/setup.sh should have installed it");
    eprintln!("skipped: {what}");
}
