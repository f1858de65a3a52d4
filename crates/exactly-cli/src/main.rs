//! The `exactly` command line: a demo on the local broker and tools to operate apps.

mod demo;
mod ops;
mod sink;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "exactly",
    version,
    about = "Exactly-once Kafka stream processing: demo and operations tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs two instances of a dedup-forward app on the local broker over messages with
    /// duplicate IDs, SIGKILLs and restarts one mid-stream, and prints what reached the output.
    Demo(demo::DemoArgs),
    /// Runs N instances of an app (yours with --app-cmd, else the built-in dedup-forward) over
    /// fresh topics, kills and restarts them on a seeded random schedule (SIGKILL,
    /// SIGSTOP/SIGCONT, SIGTERM), then verifies the output per message ID (read_committed) and
    /// prints a report. Exit code 1 on any duplicate or loss.
    Chaos(ChaosArgs),
    /// Runs a dedup-forward app instance (what `demo` starts as its instances).
    Forward(ForwardArgs),
    /// Compares an input and an output topic per message ID (read_committed): duplicates,
    /// missing and unexpected IDs. Exits 1 if there are any.
    Verify(ops::VerifyArgs),
    /// Lists the task stores of a stopped app: entries, bytes, checkpoint; looks an ID up.
    Inspect(ops::InspectArgs),
    /// Describes an app's internal topics (changelogs, dead-letter topic); creates them with
    /// --create. `exactly topics create TOPIC... --partitions N` creates an app's own topics.
    Topics(ops::TopicsArgs),
    /// Loads and validates an app config (TOML file plus EXACTLY_* environment overrides) and
    /// prints the effective config, secrets redacted. Exits 1 with the reason if it is invalid.
    Check {
        /// The config file (omit to check the environment alone).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

/// Options of `exactly chaos`.
#[derive(clap::Args, Debug)]
struct ChaosArgs {
    /// App processes.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Distinct message IDs.
    #[arg(long, default_value_t = 40_000)]
    unique: usize,
    /// Share of messages that resend an earlier ID.
    #[arg(long, default_value_t = 0.2)]
    dup_share: f64,
    /// Disruptions (SIGKILL, SIGSTOP/SIGCONT, SIGTERM).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Seed of the schedule (default: random; printed, so a run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Your app's command line, run once per instance, with placeholders the harness fills in:
    /// {bootstrap} {input} {output} {app} {instance} {state} (required: {input} {output} {app}
    /// {instance} {state}; {metrics_addr} too with --minutes). Words split like a shell's, but
    /// no shell runs, so the signals reach the app. Example:
    /// "target/release/my-app --bootstrap {bootstrap} --input {input} --output {output}
    /// --app-id {app} --instance-id {instance} --state-dir {state}"
    #[arg(long, value_name = "COMMAND")]
    app_cmd: Option<String>,
    /// Produce this file instead of generated messages: one JSON object per line,
    /// {"id": "...", "key": "...", "value": ...} (id: the `message-id` header; key optional;
    /// value a string, sent as is, or any JSON, sent as its JSON text). Produced in order, in
    /// --kills chunks.
    #[arg(long, value_name = "PATH")]
    input_file: Option<std::path::PathBuf>,
    /// Generated messages are payments over this many accounts: key `acct-{i % N}`, value an
    /// amount from 1 to 100 (for stateful apps such as the running-totals example).
    #[arg(long, default_value_t = 0)]
    accounts: usize,
    /// Where the input records carry their message ID: `header:<name>`, `key`, `json:<field>`
    /// or `json:/<pointer>`.
    #[arg(long, default_value = "header:message-id")]
    input_id: exactly_testkit::ids::IdLocation,
    /// Where the app's output records carry their input's message ID (default: where the
    /// input has it).
    #[arg(long)]
    output_id: Option<exactly_testkit::ids::IdLocation>,
    /// An option for every instance of the built-in app (repeatable; `exactly forward`'s options, e.g.
    /// `--app-arg=--threads --app-arg=2` or `--app-arg=--guarantee --app-arg=at-least-once`).
    #[arg(long = "app-arg", value_name = "ARG", allow_hyphen_values = true)]
    app_args: Vec<String>,
    /// A soak: disruptions go on for this many minutes instead of `--kills` of them, each
    /// after a round of `--round-ids` fresh IDs; pauses past the session timeout join the mix,
    /// and each instance's time not ready (`/ready`) is reported.
    #[arg(long)]
    minutes: Option<f64>,
    /// Soak: distinct IDs produced before each disruption.
    #[arg(long, default_value_t = 2_000)]
    round_ids: usize,
    /// Soak: a script that stops (`down`) and starts (`up`) the broker, e.g.
    /// `scripts/broker.sh`, to restart it between disruptions (once the group caught up).
    #[arg(long)]
    broker_script: Option<std::path::PathBuf>,
    /// Soak: the instances also record every record in PostgreSQL through the PostgreSQL sink
    /// (`exactly forward --postgres`), at this connection string; while the second round of
    /// every four is processed the sink's table is locked against writes for 10–14 s (past
    /// the sink's 5 s lock timeout: its flushes fail and their Kafka transactions abort), the
    /// fourth for 1–4 s, and its rows are verified per message ID like the output.
    #[arg(long, value_name = "POSTGRES_URL")]
    slow_sink: Option<String>,
}

/// A dedup-forward instance.
#[derive(clap::Args, Debug)]
struct ForwardArgs {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic (must exist).
    #[arg(long)]
    output: String,
    /// Application id (consumer group, internal topic prefix).
    #[arg(long)]
    app_id: String,
    /// Also record each forwarded record in PostgreSQL at this connection string, exactly once
    /// per message ID, through the PostgreSQL sink: a row per record (message ID, input
    /// partition and offset) in `{sink-table}_forwarded`, the sink's IDs in
    /// `{sink-table}_applied_ids` (both created at start if missing).
    #[arg(long, value_name = "POSTGRES_URL")]
    postgres: Option<String>,
    /// Table prefix of `--postgres`.
    #[arg(long, default_value = "exactly_forward")]
    sink_table: String,
    #[command(flatten)]
    run: exactly::cli::RunArgs,
}

fn main() -> ExitCode {
    exactly::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Forward(a) => run_forward(a),
        Command::Chaos(a) => run_chaos(a),
        Command::Verify(a) => ops::verify(a),
        Command::Inspect(a) => ops::inspect(a),
        Command::Topics(a) => ops::topics(a),
        Command::Check { config } => check(config.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let loaded = exactly::config::load(path)?;
    println!("{}", exactly::config::redacted(&loaded.runtime));
    if let Some(addr) = loaded.metrics_addr {
        println!("metrics_addr = \"{addr}\"");
    }
    eprintln!("config OK");
    Ok(ExitCode::SUCCESS)
}

fn run_chaos(a: ChaosArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..0.95).contains(&a.dup_share),
        "--dup-share must be in [0, 0.95)"
    );
    anyhow::ensure!(
        a.instances > 0 && a.partitions > 0 && a.unique > 0,
        "--instances, --partitions and --unique must be positive"
    );
    anyhow::ensure!(
        a.minutes.is_none_or(|m| m > 0.0),
        "--minutes must be positive"
    );
    anyhow::ensure!(
        a.broker_script.is_none() || a.minutes.is_some(),
        "--broker-script restarts the broker in a soak: give --minutes too"
    );
    anyhow::ensure!(
        a.slow_sink.is_none() || a.minutes.is_some(),
        "--slow-sink locks the sink's table in a soak: give --minutes too"
    );
    anyhow::ensure!(
        a.app_cmd.is_none() || a.app_args.is_empty(),
        "--app-arg adds options to the built-in app; with --app-cmd, write them into the command"
    );
    anyhow::ensure!(
        a.input_file.is_none() || a.minutes.is_none(),
        "a soak (--minutes) produces fresh rounds of generated IDs; it cannot use --input-file"
    );
    let app_command = a
        .app_cmd
        .as_deref()
        .map(exactly_testkit::chaos::AppCommand::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let (Some(command), Some(_)) = (&app_command, a.minutes) {
        anyhow::ensure!(
            command.uses("{metrics_addr}"),
            "a soak (--minutes) watches each instance's /ready: add {{metrics_addr}} to --app-cmd, where the app serves it"
        );
    }
    let messages = a.input_file.as_deref().map(read_input_file).transpose()?;
    let output_id = a.output_id.clone().unwrap_or_else(|| a.input_id.clone());
    let bs = exactly_testkit::broker::bootstrap();
    anyhow::ensure!(
        exactly_testkit::broker::reachable(&bs, std::time::Duration::from_secs(10)),
        "no Kafka broker answers at {bs}: start the local one with `scripts/broker.sh up`, or set KAFKA_BOOTSTRAP"
    );
    let mut plan = exactly_testkit::chaos::ChaosPlan {
        program: std::env::current_exe()?,
        prefix_args: vec!["forward".into()],
        instances: a.instances,
        partitions: a.partitions,
        unique: a.unique,
        dup_share: a.dup_share,
        actions: a.kills,
        seed: a.seed.unwrap_or_else(rand::random),
        accounts: a.accounts,
        state_stores: Vec::new(),
        extra_args: a.app_args.clone(),
        soak: a.minutes.map(|m| exactly_testkit::chaos::Soak {
            duration: std::time::Duration::from_secs_f64(m * 60.0),
            broker_script: a.broker_script.clone(),
        }),
        app_command,
        messages,
        input_id: a.input_id.clone(),
        output_id,
    };
    if plan.soak.is_some() {
        plan.unique = a.round_ids;
    }
    let seed = plan.seed;
    let mut slow_sink = match &a.slow_sink {
        None => None,
        Some(url) => {
            let prefix = format!("exactly_chaos_{seed}_{}", std::process::id());
            plan.extra_args.extend([
                "--postgres".to_owned(),
                url.clone(),
                "--sink-table".to_owned(),
                prefix.clone(),
            ]);
            Some(sink::SlowSink::connect(url, &prefix)?)
        }
    };
    println!(
        "chaos: seed {} (replay with --seed {}), {} instances, {} partitions",
        plan.seed, plan.seed, plan.instances, plan.partitions
    );
    let work = tempfile::Builder::new()
        .prefix("exactly-chaos-")
        .tempdir()?
        .keep();
    println!("work dir (state and logs): {}", work.display());
    let bar = match &plan.soak {
        None => {
            let bar = indicatif::ProgressBar::new(plan.actions as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} disruptions  {msg}",
                )
                .expect("a valid template"),
            );
            bar
        }
        Some(_) => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {pos} disruptions  {msg}",
                )
                .expect("a valid template"),
            );
            bar
        }
    };
    let report = exactly_testkit::chaos::run_soak_with_sink(
        &bs,
        &plan,
        &work,
        &mut |done, what| {
            bar.set_position(done as u64);
            bar.set_message(what.to_owned());
        },
        slow_sink
            .as_mut()
            .map(|s| s as &mut dyn exactly_testkit::chaos::SoakSink),
    );
    bar.finish_and_clear();
    println!("{}", report.summary());
    for exit in &report.exits {
        println!("exited on its own: {exit}");
    }
    if report.is_exact() {
        let _ = std::fs::remove_dir_all(&work);
        if let Some(s) = &slow_sink {
            s.drop_tables();
        }
        println!("exactly once: 0 duplicates, 0 missing");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("NOT exactly once; logs kept in {}", work.display());
        Ok(ExitCode::FAILURE)
    }
}

/// The messages of `exactly chaos --input-file`: one JSON object per line.
fn read_input_file(
    path: &std::path::Path,
) -> anyhow::Result<Vec<exactly_testkit::broker::TestMessage>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        id: Option<String>,
        key: Option<String>,
        value: serde_json::Value,
        timestamp: Option<i64>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read --input-file {}: {e}", path.display()))?;
    let mut messages = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: {e}; each line must be a JSON object {{\"id\": \"...\", \"key\": \"...\", \"value\": ..., \"timestamp\": ms}} (id, key and timestamp optional)",
                path.display(),
                n + 1
            )
        })?;
        messages.push(exactly_testkit::broker::TestMessage {
            id: parsed.id,
            key: parsed.key.map(String::into_bytes),
            value: match parsed.value {
                serde_json::Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            },
            timestamp: parsed.timestamp,
        });
    }
    anyhow::ensure!(
        !messages.is_empty(),
        "--input-file {} has no messages",
        path.display()
    );
    Ok(messages)
}

fn run_forward(a: ForwardArgs) -> anyhow::Result<ExitCode> {
    let output = a.output.clone();
    let instance = a.run.instance_id.clone();
    let app = a.run.app(a.app_id.clone())?.input(a.input).output(a.output);
    match a.postgres {
        None => app.run(move |_| exactly::processors::Forward::to(output.clone()))?,
        Some(url) => sink::run_forward(app, &a.app_id, &instance, output, url, &a.sink_table)?,
    }
    Ok(ExitCode::SUCCESS)
}
