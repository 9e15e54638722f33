//! Scheduling in the `flux` orchestrator against a real Triton server (cpu target, tiny fixture):
//! a bad request that shares a dynamic batch with a long valid one is refused before the long
//! loop ends; a short request that arrives while a long one runs is not held up by it (the step
//! scheduler runs the job with the fewest steps left: the long job starts no step while the short
//! one runs); a cancelled gRPC request stops its loop and says after how many steps; with more
//! instances than running jobs, a free instance refuses a bad request while every running slot is busy.
//! Timings are in `make bench-scheduling`; these tests check orders and counts, which do not
//! depend on the machine's speed. Needs the Triton venv: `make triton-venv`.

mod common;
mod triton_support;

use fluxbuild::client::{Client, Tensor};
use fluxbuild::serve::{Installation, Server, ServerOptions};
use std::time::{Duration, Instant};
use triton_support::{export, package_cpu, path, start};

const LONG_STEPS: i32 = 50;
const SHORT_STEPS: i32 = 2;
/// Not SHORT_STEPS: the warm-up's log line must not be taken for a short job's.
const WARM_UP_STEPS: i32 = 1;

/// The inputs of one request (every request sends the same set: Triton batches only those).
fn inputs(prompt: &str, steps: i32, guidance: f32) -> [Tensor; 4] {
    [
        Tensor::bytes("prompt", &[1, 1], &[prompt.as_bytes()]),
        Tensor::i32("steps", &[1, 1], &[steps]),
        Tensor::i64("seed", &[1, 1], &[1]),
        Tensor::f32("guidance", &[1, 1], &[guidance]),
    ]
}

fn generate(client: &Client, prompt: &str, steps: i32) -> Instant {
    client.infer("flux", &inputs(prompt, steps, 3.5), &["image"]).unwrap();
    Instant::now()
}

fn transformer_calls(client: &Client) -> u64 {
    let stats = client.get_json("/v2/models/transformer/stats").unwrap();
    stats["model_stats"][0]["inference_stats"]["success"]["count"]
        .as_u64()
        .unwrap()
}

fn wait_for_calls(client: &Client, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while transformer_calls(client) < at_least {
        assert!(Instant::now() < deadline, "the transformer never ran {at_least} steps");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server log's line about the job of `steps` steps (the orchestrator logs one per job).
/// The log line of the `nth` job (1 = the first) of `steps` steps the server ran: counted, because
/// a job's line may reach the log after its response, and an earlier job's would be taken for it.
fn job_line(server: &Server, steps: i32, nth: usize) -> String {
    let needle = format!("flux: job of 1 prompts, {steps} steps:");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = server.log_text().lines().filter(|l| l.contains(&needle)).nth(nth - 1) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {needle:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn short_requests_overtake_long_ones_and_cancelled_ones_stop() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    // A long batching window: requests sent together reach one execution of `flux`.
    package_cpu(&models, &repo, &["--queue-delay-us", "300000"]);
    let install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    let mut options = ServerOptions::new(&repo).unwrap();
    options.ready_timeout = Duration::from_secs(180);
    let server = Server::start(&install, &options).unwrap();
    let client = server.client();
    generate(&client, "warm up", WARM_UP_STEPS);

    a_refusal_does_not_wait_for_its_batch(&server, &client);
    a_short_request_runs_while_the_long_one_waits(&server, &client);
    a_cancelled_request_stops_and_says_after_how_many_steps(&server, options.grpc_port);
}

/// With more instances than running jobs (3 instances, 1 running job): while the running slot holds
/// a long job and a valid request waits for it in a second instance, the third instance refuses a
/// bad request before the long loop ends; the waiting job starts no step until the slot is free.
#[test]
fn a_free_instance_refuses_while_every_running_slot_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &["--instances", "3", "--running-jobs", "1"]);
    let server = start(&repo, false);
    let client = server.client();
    generate(&client, "warm up", WARM_UP_STEPS);

    let calls = transformer_calls(&client);
    let url = server.url();
    let long = std::thread::spawn(move || generate(&Client::new(&url).unwrap(), "a long one", LONG_STEPS));
    wait_for_calls(&client, calls + 2); // the long loop holds the running slot
    let url = server.url();
    let waiting = std::thread::spawn(move || generate(&Client::new(&url).unwrap(), "a short one", SHORT_STEPS));
    std::thread::sleep(Duration::from_millis(300)); // past the batching window: in its own instance
    let error = client
        .infer("flux", &inputs("a bad one", SHORT_STEPS, 3e38), &["image"])
        .unwrap_err()
        .to_string();
    let steps_at_refusal = transformer_calls(&client) - calls;
    let long_done = long.join().unwrap();
    let short_done = waiting.join().unwrap();
    assert!(error.contains("[rule guidance_range]"), "{error}");
    assert!(
        steps_at_refusal < LONG_STEPS as u64,
        "the refusal waited for the long request's image ({steps_at_refusal} steps)"
    );
    assert!(
        long_done < short_done,
        "the waiting request finished before the running one"
    );
    let long = job_line(&server, LONG_STEPS, 1);
    let short = job_line(&server, SHORT_STEPS, 1);
    eprintln!("{long}\n{short}");
    assert!(
        long.contains("; 0 steps of other jobs started meanwhile"),
        "a second job ran steps beside the only running slot's job: {long}"
    );
    assert!(
        !short.contains("waited 0 ms for a running slot"),
        "the short job did not wait for the running slot: {short}"
    );
}

fn flux_batches_of_two(client: &Client) -> u64 {
    let stats = client.get_json("/v2/models/flux/stats").unwrap();
    stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["batch_size"].as_u64() == Some(2))
        .map(|b| b["compute_infer"]["count"].as_u64().unwrap())
        .sum()
}

/// A bad request that arrives in one dynamic batch with a long valid one is answered at once
/// (its own response sender), not when the batch's images are done.
fn a_refusal_does_not_wait_for_its_batch(server: &Server, client: &Client) {
    let batches = flux_batches_of_two(client);
    let calls = transformer_calls(client);
    let url = server.url();
    let long = std::thread::spawn(move || generate(&Client::new(&url).unwrap(), "a long one", LONG_STEPS));
    std::thread::sleep(Duration::from_millis(50)); // inside the batching window
    let error = client
        .infer("flux", &inputs("a bad one", SHORT_STEPS, 3e38), &["image"])
        .unwrap_err()
        .to_string();
    let steps_at_refusal = transformer_calls(client) - calls;
    long.join().unwrap();
    assert!(error.contains("[rule guidance_range]"), "{error}");
    // The execution is counted when it returns, just after its responses went out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while flux_batches_of_two(client) == batches {
        assert!(
            Instant::now() < deadline,
            "the two requests did not come to flux as one batch: {}",
            client.get_json("/v2/models/flux/stats").unwrap()["model_stats"][0]["batch_stats"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        steps_at_refusal < LONG_STEPS as u64,
        "the refusal waited for the long request's image ({steps_at_refusal} steps)"
    );
}

fn a_short_request_runs_while_the_long_one_waits(server: &Server, client: &Client) {
    let before = transformer_calls(client);
    let url = server.url();
    let long = std::thread::spawn(move || generate(&Client::new(&url).unwrap(), "a long one", LONG_STEPS));
    wait_for_calls(client, before + 2); // the long loop is running
    let short_done = generate(client, "a short one", SHORT_STEPS);
    let long_done = long.join().unwrap();
    assert!(short_done < long_done, "the short request finished after the long one");

    // The second long job: a_refusal_does_not_wait_for_its_batch ran the first.
    let short = job_line(server, SHORT_STEPS, 1);
    let long = job_line(server, LONG_STEPS, 2);
    eprintln!("{short}\n{long}");
    assert!(
        short.contains("; 0 steps of other jobs started meanwhile"),
        "the long job ran steps while the short one was running: {short}"
    );
    assert!(
        long.contains(&format!("; {SHORT_STEPS} steps of other jobs started meanwhile")),
        "the short job did not run inside the long one: {long}"
    );
}

fn a_cancelled_request_stops_and_says_after_how_many_steps(server: &Server, grpc_port: u16) {
    let script = common::repo().join("tests/triton_grpc_cancel.py");
    let python = Installation::find(None).unwrap().path[0].join("python3");
    let output = std::process::Command::new(python)
        .args([
            path(&script),
            &server.url(),
            &format!("127.0.0.1:{grpc_port}"),
            &LONG_STEPS.to_string(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ran = counts["ran"].as_u64().unwrap();
    let at_cancel = counts["at_cancel"].as_u64().unwrap();
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("cancelled; stopped after"))
        .unwrap_or_else(|| panic!("no cancellation in the server log:\n{log}"));
    eprintln!("cancelled with {at_cancel} steps done; {ran} ran in all; {line}");
    assert!(
        line.contains(&format!("stopped after {ran} of {LONG_STEPS} steps")),
        "the log's step count is not the transformer's ({ran}): {line}"
    );
    assert!(ran < LONG_STEPS as u64, "the cancelled request ran all its steps");
}
