//! The `nearstore` command line, built inside the test package so tests can run it as a real
//! process (for SIGKILL crash tests). Identical to the shipped binary: both call
//! `nearstore::main`.

fn main() -> std::process::ExitCode {
    nearstore::main()
}
