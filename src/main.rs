use std::process::ExitCode;

fn main() -> ExitCode {
    match lejepa::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain: "reading X: expected Y".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
