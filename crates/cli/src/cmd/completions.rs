//! `mayfly completions`: shell completion scripts for the whole command tree.

/// Writes `shell`'s completions for `command` (the whole `mayfly` tree) to stdout.
pub fn run(shell: clap_complete::Shell, mut command: clap::Command) {
    clap_complete::generate(shell, &mut command, "mayfly", &mut std::io::stdout());
}
