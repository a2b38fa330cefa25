use std::process::ExitCode;

fn main() -> ExitCode {
    portvakt::cli::main()
}
