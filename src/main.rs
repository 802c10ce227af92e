//! The `ws-gateway` binary. Everything it does lives in `gateway_server::cli`; this shim exists
//! so that the workspace's root package owns the binary its end-to-end tests run.

fn main() -> std::process::ExitCode {
    gateway_server::cli::main()
}
