fn main() -> std::process::ExitCode {
    apiguard::cli::main()
}
