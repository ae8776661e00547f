//! `scoregen`: the command-line shell over the library. It parses
//! arguments, calls the library and prints; nothing else lives here.
//! Each subcommand is a module of [`commands`]; this file holds the global
//! flags, the process setup and the dispatch.

mod commands;
#[cfg(test)]
mod fuzz;

use clap::{Parser, Subcommand};
use commands::Globals;
use std::process::ExitCode;

// Candle allocates a fresh buffer for every tensor op; with glibc malloc the
// large ones are mmap-ed and unmapped each time, and page faults dominated
// the run time (measured: 19 ms per sampling step, most of it in the kernel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2). −1 keeps freed pages
/// instead of returning them to the OS, so the same buffers are reused step
/// after step without page faults (measured: 2× faster sampling).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Small (4 KiB) pages for this process unless `SCOREGEN_THP=1`.
///
/// mimalloc asks for transparent huge pages (`MADV_HUGEPAGE`) on its arenas,
/// and a 2 MiB page is zeroed whole by the thread that first touches it. On
/// the cloud VMs we measure on, that first touch was the first step's cost:
/// a CIFAR-size forward + VJP took 5.3–6.2 s the first time and 2.3–3.1 s
/// with small pages (1 thread, six interleaved rounds each; `perf`: 75 % of
/// the first call in the kernel's `clear_page_erms`), while later steps, and
/// `bench gemm`, ran at the same speed either way. `PR_SET_THP_DISABLE`
/// (prctl(2)) turns huge pages off for this process only; the kernel's
/// setting for others is untouched.
fn small_pages() {
    if std::env::var("SCOREGEN_THP").is_ok_and(|v| v.trim() == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: a plain prctl on this process with integer arguments; on a
    // kernel without it, it fails with EINVAL and nothing changes.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "scoregen",
    version,
    about = "Score-based generative modeling: train score models, sample the reverse SDE, check against exact answers"
)]
#[command(
    after_help = "Exit codes: 0 success, 1 error (the message names the file and field), 2 bad command-line usage,\n130 stopped by Ctrl-C (training keeps a checkpoint of the step it stopped at; sampling writes nothing)."
)]
struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Where tensors live: cpu, cuda or cuda:N (GPU N; needs a build with the `cuda` feature).
    /// Default: the config's run.device for train and quickstart, else cpu.
    #[arg(long, global = true, value_name = "cpu|cuda[:N]")]
    device: Option<scoregen::device::DeviceSpec>,
    #[command(subcommand)]
    command: Command,
}

// The subcommands, in the order `--help` lists them; each one's help text and
// examples sit on its `Args` in `commands/` (a doc comment here would become
// the about text of `scoregen` itself).
#[derive(Subcommand)]
enum Command {
    Train(commands::train::Args),
    Sample(commands::sample::Args),
    Inpaint(commands::inpaint::Args),
    Classify(commands::classify::Args),
    SuggestSigmas(commands::suggest_sigmas::Args),
    Likelihood(commands::likelihood::Args),
    Eval(commands::eval::Args),
    TrainClassifier(commands::train_classifier::Args),
    Demo(commands::demo::Args),
    List(commands::list::Args),
    Bench(commands::bench::Args),
    Report(commands::report::Args),
    Info(commands::info::Args),
    Quickstart(commands::quickstart::Args),
}

/// The error chain as one line, a setting named by its flag: the library
/// names a setting by its config key (`sampling.sampler: …`), the command line
/// by the flag that sets it (`--sampler (sampling.sampler): …`).
fn spelled(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match e.downcast_ref::<scoregen::Error>().and_then(|e| e.setting()) {
        Some((key, message)) => {
            let flag = scoregen::app::commands::sample::setting_name(key).replace('_', "-");
            // a key that is its flag's stem (`batch_size`) is not said twice
            let named = if key.contains('.') { format!("--{flag} ({key})") } else { format!("--{flag}") };
            text.replace(&format!("{key}: {message}"), &format!("{named}: {message}"))
        }
        None => text,
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`scoregen … | head`) like other Unix tools,
    // instead of panicking in println!.
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    keep_freed_memory();
    small_pages();
    stop_cleanly_on_ctrl_c();
    let cli = Cli::parse();
    scoregen::init();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let globals = Globals { quiet: cli.quiet, json: cli.json, device: cli.device };
    match run(&cli.command, &globals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One write, so the lines of several processes (mpirun) do not interleave.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("error: {}\n", spelled(&e)).as_bytes());
            // 128 + SIGINT, as a shell reports a process stopped by Ctrl-C.
            if scoregen::progress::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Ctrl-C (SIGINT): training stops after its current step with a checkpoint,
/// sampling stops and writes nothing (both then exit with 130). Elsewhere, or
/// at a second Ctrl-C, the process exits at once; every file it writes is
/// written atomically, so nothing is left half-written either way.
fn stop_cleanly_on_ctrl_c() {
    let handler = || {
        if scoregen::progress::interrupted() || !scoregen::progress::handles_interrupts() {
            std::process::exit(130);
        }
        scoregen::progress::request_interrupt();
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("warning: Ctrl-C will not stop cleanly: {e}");
    }
}

fn run(command: &Command, g: &Globals) -> anyhow::Result<()> {
    use commands::*;
    match command {
        Command::Train(a) => train::run(a, g),
        Command::Sample(a) => sample::run(a, g),
        Command::Inpaint(a) => inpaint::run(a, g),
        Command::Classify(a) => classify::run(a, g),
        Command::SuggestSigmas(a) => suggest_sigmas::run(a, g),
        Command::Likelihood(a) => likelihood::run(a, g),
        Command::Eval(a) => eval::run(a, g),
        Command::TrainClassifier(a) => train_classifier::run(a, g),
        Command::Demo(a) => demo::run(a, g),
        Command::List(a) => list::run(a, g),
        Command::Bench(a) => bench::run(a, g),
        Command::Report(a) => report::run(a, g),
        Command::Info(a) => info::run(a, g),
        Command::Quickstart(a) => quickstart::run(a, g),
    }
}
