//! The `primer` command line: parse, dispatch, print one error at the edge.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
