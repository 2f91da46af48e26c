//! Command-line flags of the bench binaries that run as servers or load generators.

/// The value after `--name` in `args`, if any.
pub fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .cloned()
}
