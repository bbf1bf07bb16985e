//! The `echo-server` command. All of it lives in [`echo_server::cli`].

fn main() -> std::process::ExitCode {
    echo_server::cli::main()
}
