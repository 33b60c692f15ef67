//! The `nearstore` binary.

fn main() -> std::process::ExitCode {
    nearstore::main()
}
